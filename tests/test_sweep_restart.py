"""What a resumed sweep changes before it starts again: the new --max-concurrent."""

from __future__ import annotations

from ray import tune
from ray.tune.search import Searcher

from search.concurrency import SessionLimiter, set_concurrency


class Fixed(Searcher):
    def suggest(self, trial_id):
        return {"x": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def trainable(config):
    return {"score": config["x"]}


def test_a_restored_tuner_runs_the_new_number_of_trials_at_once(tmp_path):
    limiter = SessionLimiter(Fixed(metric="score", mode="max"), max_concurrent=1)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=limiter, num_samples=4),
               run_config=tune.RunConfig(name="restore", storage_path=str(tmp_path)))
    tuner = tune.Tuner.restore(str(tmp_path / "restore"), trainable=trainable)
    set_concurrency(tuner, 3)
    restored = tuner._local_tuner._tune_config
    assert isinstance(restored.search_alg, SessionLimiter) and restored.search_alg.max_concurrent == 3
    assert restored.max_concurrent_trials is None  # Tune wraps no limiter of its own around ours
    # Tune loads the limiter's saved state over it when the run resumes: the session's limit stays.
    saved = limiter.get_state()
    restored.search_alg.set_state(saved)
    assert saved["max_concurrent"] == 1 and restored.search_alg.max_concurrent == 3
