"""Names on the cluster: the API's group/version/kind, labels, the Ray pods' environment and mounts.

Names on the cluster: the CPTJob API's group/version/kind, the labels of the objects the operator
creates, the environment the operator gives the Ray pods (and the trainer reads), and where the pods
mount the job spec and the model cache.
"""

from __future__ import annotations

# -- the CPTJob API (cpt.dev/v1alpha1) ------------------------------------------------------------

GROUP = "cpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CPTJob"
PLURAL = "cptjobs"
SINGULAR = "cptjob"
SHORT_NAMES = ("cpt",)
CATEGORIES = ("all", "ml")
#: (group, version, plural) of CPTJobs and of KubeRay's RayJobs, as API paths take them.
CPTJOBS = (GROUP, VERSION, PLURAL)
RAYJOBS = ("ray.io", "v1", "rayjobs")
RAYJOB_API_VERSION = f"{RAYJOBS[0]}/{RAYJOBS[1]}"
RAYJOB_KIND = "RayJob"
#: The CustomResourceDefinition of RayJobs: its schema tells what the installed KubeRay supports.
RAYJOB_CRD = f"{RAYJOBS[2]}.{RAYJOBS[0]}"

# -- labels and annotations ------------------------------------------------------------------------

#: Prefix of our own labels; also of the annotations kopf keeps its handler state in.
LABEL_PREFIX = f"{GROUP}/"
#: Every object the operator creates for a job carries the job's name; Ray pods also their attempt.
JOB_LABEL = f"{LABEL_PREFIX}job"
ATTEMPT_LABEL = f"{LABEL_PREFIX}attempt"
#: Kueue's queue label, copied from the CPTJob to its RayJob.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Kubernetes' recommended labels the operator sets on its children.
APP_NAME_LABEL = "app.kubernetes.io/name"
APP_INSTANCE_LABEL = "app.kubernetes.io/instance"
APP_COMPONENT_LABEL = "app.kubernetes.io/component"
APP_PART_OF_LABEL = "app.kubernetes.io/part-of"
APP_MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
APP_LABELS = (APP_NAME_LABEL, APP_INSTANCE_LABEL, APP_COMPONENT_LABEL, APP_PART_OF_LABEL, APP_MANAGED_BY_LABEL)
#: What KubeRay labels: a Ray pod's role, and the submitter pod of a RayJob (K8sJobMode).
RAY_NODE_TYPE_LABEL = "ray.io/node-type"
RAY_LABEL_PREFIX = "ray.io/"
SUBMITTER_JOB_LABEL = "batch.kubernetes.io/job-name"
SUBMITTER_JOB_LABEL_LEGACY = "job-name"
#: The label every Namespace carries with its own name (Kubernetes 1.21+); NetworkPolicies select by it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# -- Ray's authentication, as KubeRay sets it up (rayClusterSpec.authOptions) ----------------------

#: The key of a token Secret (authOptions.secretName) that KubeRay reads the Ray cluster's token from.
RAY_AUTH_TOKEN_KEY = "auth_token"
#: Variables KubeRay gives every Ray container and the submitter when authOptions.mode is token. KubeRay keeps a
#: value already in the pod template, so nothing the operator builds (or a pod override) may set RAY_AUTH_*.
RAY_AUTH_ENV_PREFIX = "RAY_AUTH_"
RAY_AUTH_MODE_ENV = f"{RAY_AUTH_ENV_PREFIX}MODE"
RAY_AUTH_TOKEN_ENV = f"{RAY_AUTH_ENV_PREFIX}TOKEN"
RAY_K8S_TOKEN_AUTH_ENV = "RAY_ENABLE_K8S_TOKEN_AUTH"
#: The Ray head's dashboard port (KubeRay's default): job submission, and KubeRay's polls of a job's status.
RAY_DASHBOARD_PORT = 8265

# -- the Ray pods' environment ---------------------------------------------------------------------

#: Variables named CPT_* in a Ray pod belong to the operator (a pod override may not set them).
ENV_PREFIX = "CPT_"
#: The per-node cache of downloaded models and converted tokenizers (the pods' cache volume).
CACHE_DIR_ENV = f"{ENV_PREFIX}CACHE_DIR"
#: Test and benchmark hooks of the trainer, `module:attribute` entries (cpt_trainer.train.hooks).
HOOKS_ENV = f"{ENV_PREFIX}TRAINER_HOOKS"
#: Verbose logs (Ray Train's own included) in `cpt` commands and the trainer.
DEBUG_ENV = f"{ENV_PREFIX}DEBUG"
#: The Hugging Face write token of `checkpoint.export.push`, from its Secret.
HUB_PUSH_TOKEN_ENV = f"{ENV_PREFIX}HUB_PUSH_TOKEN"
#: The Hugging Face token: the key of a token Secret and the variable huggingface_hub reads.
HF_TOKEN = "HF_TOKEN"
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
#: Keys of `spec.storage.credentialsSecret`, also the variables the pods get and `cpt run` reads.
ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN = "AWS_SESSION_TOKEN"
#: (key, optional) of the credentials Secret.
CREDENTIAL_KEYS = ((ACCESS_KEY_ID, False), (SECRET_ACCESS_KEY, False), (SESSION_TOKEN, True))
AWS_REGION_ENV = "AWS_REGION"
AWS_ENDPOINT_ENV = "AWS_ENDPOINT_URL"
#: Keys of the tracking Secrets that reach the Ray pods (each optional: a sink may need only some).
TRACKING_KEYS = {
    "mlflow": ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "wandb": ("WANDB_API_KEY",),
}

# -- the Ray pods' mounts --------------------------------------------------------------------------

#: The resolved job spec (a ConfigMap, head only), the file in it, and the volume.
SPEC_MOUNT = "/etc/cpt"
SPEC_KEY = "job.yaml"
SPEC_VOLUME = "job-spec"
#: The model and data cache (CACHE_DIR_ENV points here) and its volume.
CACHE_DIR = "/var/cache/cpt"
CACHE_VOLUME = "cache"
#: Memory-backed shared memory (NCCL, data loaders) and its volume.
SHM_DIR = "/dev/shm"
SHM_VOLUME = "dshm"
OPERATOR_VOLUMES = (SHM_VOLUME, CACHE_VOLUME, SPEC_VOLUME)
