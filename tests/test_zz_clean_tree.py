"Runs last (files run in name order): the test suite left the repository as it found it."
from conftest import git_status


def test_the_suite_wrote_nothing_into_the_repository(request):
    before = request.config.git_status_before
    if before is None: return   # not a git checkout: nothing to compare
    after = git_status()
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    assert not new, f"tests wrote into the repository: {new}"
