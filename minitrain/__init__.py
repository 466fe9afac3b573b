__version__ = "0.2.0"

from minitrain.data import DataLoaders, TensorLoader, digits, fashion_mnist, get_dls, collate_dict, read_idx
from minitrain.events import (EVENTS, STEPS, Callback, CallbackError, CancelBatchException, CancelEpochException,
                              CancelFitException, NonFiniteLossError, model_device, run_cbs, with_cbs)
from minitrain.learner import Learner, MomentumLearner, TrainCB, TrainLearner
from minitrain.checkpoint import load_learner, save_learner
from minitrain.callbacks import (BatchTransformCB, DeviceCB, Mean, MetricsCB, MulticlassAccuracy, SingleBatchCB,
                                 default_device, set_seed, to_cpu, to_device)
from minitrain.progress import ProgressCB
from minitrain.schedulers import (BaseSchedCB, BatchSchedCB, EpochSchedCB, LRFinderCB, OneCycleCB, RecorderCB, get_lr,
                                  lr_find, plot_lr_find)
from minitrain.models import CNN, MLP, Conv2dWithReLU, GeneralRelu, conv, init_weights, model_summary
from minitrain.parallel import parallel_map
from minitrain.hooks import (ActivationStats, Hook, Hooks, HooksCallback, StoreModuleStats, StoreModuleStatsCB,
                             lsuv_init)
