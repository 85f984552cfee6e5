# Included by common.smk (kept apart: snakemake --lint). The run's hooks, one of each (snakemake
# keeps only the last `onstart:`):
# * with the slurm executor, before the first sbatch: every job's request (its evaluated
#   resources) against what `sinfo` says the cluster's partitions offer; a job no node can run
#   stops the run, naming the rule and the resource (mmablate.slurm_check); so does a profile
#   sized for another scale;
# * with the local executor: the fork server that imports torch & co. once for all jobs
#   (mmablate.forkserver; `--config forkserver=false` turns it off; docs/forkserver.md). At the
#   run's end (onsuccess/onerror) it is stopped, the jobs rerun after a worker crash are
#   listed, and the served jobs' benchmark files get their workers' wall/CPU/peak RSS.
onstart:
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from mmablate.slurm_check import check_jobs

        _n = check_jobs(workflow.dag.needrun_jobs(), scale=config["scale"])
        print(f"mmablate: slurm-check: {_n} jobs fit the cluster's partitions", file=sys.stderr)
    from mmablate.forkserver import workflow_start

    workflow_start(workflow, config)


onsuccess:
    from mmablate.forkserver import workflow_stop

    workflow_stop(workflow)


onerror:
    from mmablate.forkserver import workflow_stop

    workflow_stop(workflow)
