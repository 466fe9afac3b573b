"minitrain: a small, readable, fastai-style training loop on PyTorch. `from minitrain import *` gives the core and the hooks wing."
__version__ = "0.3.0"

from minitrain.data import DataLoaders, TensorLoader, collate_dict, digits, get_dls, inplace
from minitrain.datasets import (FASHION_CLASSES, Images, augment_batch, fashion_mnist, read_cifar, read_idx,
                                read_image_folder, read_images, read_mnist, vision_dls)
from minitrain.events import (EVENTS, STEPS, Callback, CallbackError, CancelBatchException, CancelEpochException,
                              CancelFitException, CancelStepException, NonFiniteLossError, run_cbs, with_cbs)
from minitrain.device import (DeviceCB, clean_mem, collate_device, def_device, default_device, model_device, to_cpu,
                              to_device)
from minitrain.output import show_info, show_row
from minitrain.seed import set_seed
from minitrain.metrics import Mean, MetricsCB, MulticlassAccuracy, WeightedMean
from minitrain.learner import Learner, MomentumLearner, TrainCB, TrainLearner
from minitrain.distributed import (DDPCB, barrier, distributed_loader, is_main_process, rank, unwrap_model, world_size)
from minitrain.checkpoint import load_learner, save_learner
from minitrain.callbacks import (BatchTransformCB, CapturePreds, GradientAccumulationCB, GradientClipCB, MomentumCB,
                                 SingleBatchCB, capture_preds, show_image_batch)
from minitrain.accel import AccelerateCB, ChannelsLastCB, CompileCB, MixedPrecision, MixedPrecisionCB
from minitrain.plotting import get_grid, plot_func, show_image, show_images, subplots
from minitrain.progress import ProgressCB
from minitrain.schedulers import (BaseSchedCB, BatchSchedCB, EpochSchedCB, LRFinderCB, OneCycleCB, RecorderCB, get_lr,
                                  lr_find, plot_lr_find)
from minitrain.models import (CNN, MLP, Conv2dWithReLU, GeneralRelu, ResBlock, act_gr, conv, get_model, init_weights,
                              model_summary, summarize)
from minitrain.parallel import parallel_map
from minitrain.hooks import (ActivationStats, Hook, Hooks, HooksCallback, StoreModuleStats, StoreModuleStatsCB,
                             append_stats, get_hist, get_min, lsuv_init)

# What `from minitrain import *` gives: the names above, not the submodules (a module named `data` would shadow yours).
from types import ModuleType as _Module
__all__ = ['__version__'] + [n for n, v in list(globals().items()) if not n.startswith('_') and not isinstance(v, _Module)
                              and n != 'annotations']
