"""KLQ Lab's Python client of its REST API (``/api/v1``), for scripts, notebooks and the dashboard.

:class:`Client` is one HTTP layer (httpx, bearer token, timeouts; it imports nothing of the dashboard, the
server or the worker, so it works against a remote backend) with a method per endpoint, returning the JSON
the API sends (plain dicts and lists, cheap to cache and pickle) typed by :mod:`klq.api_types` (generated
from the API's schema), plus what a script wants on top of it: waiting for a run or a judgement, metrics
as a pandas DataFrame, every sample of a run, and run configs from YAML files::

    from klq.client import Client

    with Client() as klq:                                  # KLQ_API_URL / KLQ_API_TOKEN, or the local data dir
        run = klq.create_run("configs/builtin-klq.yaml", queue="cpu", tags=["sweep"])
        run = klq.wait_for_run(run["id"], timeout=3600)    # RunFailedError carries the run's error
        df = klq.metrics(run["id"], ["objective/scores", "objective/kl"], wide=True)
        samples = klq.samples(run["id"])                   # the latest eval step's samples
        verdict = klq.judge(run["id"], num_prompts=64)     # against the SFT policy; waits for the result
        print(verdict["result"]["win_rate"])
        exp = klq.create_experiment("configs/builtin-klq.yaml",   # KLQ vs PPO, 2 taus x 3 seeds
                                    {"kl_coefs": [0.02, 0.05], "seeds": [1, 2, 3]}, queue="cpu")
        exp = klq.wait_experiment(exp["id"], timeout=6 * 3600)  # runs, then the judgements it queues
        results = klq.experiment_results(exp["id"])            # mean +- 95% CI per tau, win-rates

The server: ``base_url``, else ``$KLQ_API_URL``, else ``http://127.0.0.1:8000``. The token: ``token``,
else ``$KLQ_API_TOKEN``, else the file ``<data_dir>/api_token`` that the API writes at its first start
(``data_dir``: the argument, else ``$KLQ_DATA_DIR``, else ``./.klq-data``).

Every failed request raises :class:`APIError` with the HTTP status and the backend's ``detail``; for a 422
``field_errors`` maps each bad field (dotted, e.g. ``config.train.batch_size``) to its messages. A server
that cannot be reached raises :class:`APIConnectionError` (an ``APIError`` with status 0).

The package: `klq.client.base` is the HTTP layer (``ClientBase``: the connection, requests, waits, and the
server's own endpoints), `klq.client.errors` the errors; each resource of the API has a module whose mixin
holds its methods (`runs`, `metrics`, `samples`, `checkpoints`, `logs`, `judgements`, `experiments`), and
:class:`Client` is all of them.
"""

from __future__ import annotations

from klq.client.base import DEFAULT_API_URL, TERMINAL_STATUSES, ClientBase, resolve_token
from klq.client.checkpoints import CheckpointsAPI
from klq.client.errors import (
    APIConnectionError,
    APIError,
    ExperimentFailedError,
    JudgementFailedError,
    RunFailedError,
    WaitTimeout,
)
from klq.client.experiments import ExperimentsAPI
from klq.client.judgements import JudgementsAPI
from klq.client.logs import LogsAPI
from klq.client.metrics import MetricsAPI
from klq.client.runs import RunsAPI
from klq.client.runs import _base_config as _base_config  # tests/test_config.py imports it from here
from klq.client.samples import SamplesAPI

__all__ = [
    "DEFAULT_API_URL",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "Client",
    "ExperimentFailedError",
    "JudgementFailedError",
    "RunFailedError",
    "WaitTimeout",
    "resolve_token",
]


class Client(
    RunsAPI, MetricsAPI, SamplesAPI, CheckpointsAPI, LogsAPI, JudgementsAPI, ExperimentsAPI, ClientBase
):
    """KLQ Lab's REST API, one method per endpoint, plus script helpers (waits, DataFrames, config files).

    ``base_url``: the server (``http://host:8000``; a trailing ``/api/v1`` is fine); None: ``$KLQ_API_URL``
    or ``http://127.0.0.1:8000``. ``token``: an API token (``klq_...``); None: :func:`resolve_token` looks
    in ``$KLQ_API_TOKEN`` and then ``<data_dir>/api_token``. ``data_dir``: where to look for that file;
    None: ``$KLQ_DATA_DIR``, else ``./.klq-data``. ``timeout``: seconds per request (downloads get
    ``download_timeout``). Thread-safe (one httpx connection pool); use as a context manager or call
    :meth:`close`.
    """
