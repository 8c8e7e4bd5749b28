#!/bin/sh
# Entry point of the KLQ Lab image: runs its arguments (`klq api`, `klq worker --queues gpu`, ...).
set -e
# KLQ_WORKER_GPUS: a list such as "0,1" gives a worker those GPUs and "" none (the CPU worker); "all"
# (docker-compose.yml's default for the GPU worker) means every GPU the container sees, which the worker
# finds with nvidia-smi when the variable is unset.
if [ "${KLQ_WORKER_GPUS-}" = "all" ]; then
    unset KLQ_WORKER_GPUS
fi
exec "$@"
