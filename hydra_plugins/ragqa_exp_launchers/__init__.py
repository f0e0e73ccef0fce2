"""Hydra launchers for ragqa_exp sweeps: `hydra/launcher=ray` and `hydra/launcher=slurm`.

They are hydra-ray-launcher's and hydra-submitit-launcher's launchers (Ray / submitit do the work) with what a
ragqa_exp sweep needs on top: each job records where it ran (`<job>/launcher.json`: pid, host,
CUDA_VISIBLE_DEVICES, Ray/SLURM ids); failed jobs, including jobs killed by Ray or SLURM, are collected in the
driver like the basic launcher's (status.json, the failure list, exit 1); a missing extra is a one-line error.
Hydra only loads launcher classes from the `hydra_plugins` namespace, hence this package; configs:
conf/hydra/launcher/{ray,slurm}.yaml."""
