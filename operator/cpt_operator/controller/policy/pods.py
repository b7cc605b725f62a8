"""The Ray pods of a job against the admin's pod policy (pure).

Creating a CPTJob makes KubeRay create pods for the tenant, so a CPTJob must not give a tenant a pod it
could not create itself. Checked: the image, the ServiceAccount, PriorityClass, tolerations and scheduler,
every Secret a pod override reads, volume types and host paths, and the security contexts against the Pod
Security Standard of the policy (`restricted` by default: the operator's own pods meet it). Each refusal is
one line naming the spec field and the rule. The final pod templates are checked as well, so a value that
only appears once the overrides are merged is refused too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob

from cpt_operator.controller.policy.admin import PodPolicy, matches

#: Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
#: Taints of control-plane nodes: a tenant's pods are never scheduled there.
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")

#: The securityContexts the operator gives every Ray pod and container under `restricted`.
RESTRICTED_POD_CONTEXT = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def image_repository(image: str) -> str:
    """`registry/name` of `registry/name:tag` or `registry/name@sha256:...`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def allowed_images(policy: PodPolicy, trainer_image: str) -> list[str]:
    return policy.allowed_images or [f"{image_repository(trainer_image)}:*", f"{image_repository(trainer_image)}@*"]


class _Checker:
    def __init__(self, policy: PodPolicy) -> None:
        self.policy = policy
        self.problems: list[str] = []
        self.why = f"refused by the cluster's pod policy ({policy.profile})"

    def refuse(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}; {self.why}")

    # -- names -----------------------------------------------------------------------------

    def service_account(self, where: str, name: str | None) -> None:
        if name and not matches(name, self.policy.allowed_service_accounts):
            allowed = ", ".join(self.policy.allowed_service_accounts) or "none"
            self.refuse(where, f"ServiceAccount '{name}' is not allowed (allowed: {allowed})")

    def priority_class(self, where: str, name: str | None) -> None:
        if not name:
            return
        allowed = self.policy.allowed_priority_classes
        if (name.startswith("system-") and not matches(name, allowed)) or (allowed and not matches(name, allowed)):
            self.refuse(where, f"PriorityClass '{name}' is not allowed")

    def tolerations(self, where: str, tolerations: Iterable[dict[str, Any]]) -> None:
        allowed = self.policy.allowed_toleration_keys
        for i, toleration in enumerate(tolerations):
            key = toleration.get("key") or ""
            if not key and toleration.get("operator") == "Exists":
                self.refuse(
                    f"{where}[{i}]", "a toleration without a key tolerates every taint, the control plane's too"
                )
            elif key in CONTROL_PLANE_TAINTS and not matches(key, allowed):
                self.refuse(f"{where}[{i}].key", f"{key}: pods of a job never run on control-plane nodes")
            elif key and allowed and not matches(key, allowed):
                self.refuse(f"{where}[{i}].key", f"tolerating '{key}' is not allowed")

    def secret(self, where: str, name: str | None) -> None:
        if name and not matches(name, self.policy.allowed_secrets):
            self.refuse(
                where,
                f"Secret '{name}' is not one a pod override may read (a CPTJob names its Secrets in its own fields: "
                "credentialsSecret, tokenSecret, ...; others need policy.pods.allowedSecrets)",
            )

    # -- pod parts -------------------------------------------------------------------------

    def env(self, where: str, env: Iterable[dict[str, Any]], env_from: Iterable[dict[str, Any]]) -> None:
        for i, var in enumerate(env):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                self.secret(f"{where}.env[{i}].valueFrom.secretKeyRef.name", ref.get("name"))
        for i, source in enumerate(env_from):
            if source.get("secretRef"):
                self.secret(f"{where}.envFrom[{i}].secretRef.name", source["secretRef"].get("name"))

    def volumes(self, where: str, volumes: Iterable[dict[str, Any]]) -> None:
        policy = self.policy
        allowed = set(policy.allowed_volume_types)
        if policy.profile == "restricted":
            allowed |= RESTRICTED_VOLUMES
        for i, volume in enumerate(volumes):
            kinds = [k for k in volume if k != "name"]
            kind = kinds[0] if kinds else ""
            at = f"{where}.volumes[{i}]"
            if kind == "hostPath":
                path = str((volume.get("hostPath") or {}).get("path", ""))
                if policy.profile != "privileged" and "hostPath" not in allowed:
                    self.refuse(f"{at}.hostPath", "hostPath volumes are not allowed")
                elif policy.profile != "privileged" and not any(
                    path == p or path.startswith(p.rstrip("/") + "/") for p in policy.allowed_host_paths
                ):
                    self.refuse(f"{at}.hostPath.path", f"'{path}' is not under an allowed host path")
            elif policy.profile == "restricted" and kind not in allowed:
                self.refuse(f"{at}.{kind}", f"volume type '{kind}' is not allowed")
            if kind == "secret":
                self.secret(f"{at}.secret.secretName", (volume.get("secret") or {}).get("secretName"))
            for j, source in enumerate((volume.get("projected") or {}).get("sources") or []):
                if source.get("secret"):
                    self.secret(f"{at}.projected.sources[{j}].secret.name", source["secret"].get("name"))
                if source.get("serviceAccountToken") and "serviceAccountToken" not in allowed:
                    self.refuse(
                        f"{at}.projected.sources[{j}].serviceAccountToken",
                        "projected ServiceAccount tokens are not allowed",
                    )

    def context(self, where: str, ctx: dict[str, Any] | None, container: bool) -> None:
        """A pod (`container=False`) or container securityContext against the profile."""
        if not ctx or self.policy.profile == "privileged":
            return
        restricted = self.policy.profile == "restricted"
        if ctx.get("privileged"):
            self.refuse(f"{where}.privileged", "privileged containers are not allowed")
        capabilities = set((ctx.get("capabilities") or {}).get("add") or [])
        allowed = set(self.policy.allowed_capabilities) | (
            RESTRICTED_CAPABILITIES if restricted else BASELINE_CAPABILITIES
        )
        for capability in sorted(capabilities - allowed):
            self.refuse(f"{where}.capabilities.add", f"capability {capability} is not allowed")
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            self.refuse(f"{where}.seccompProfile.type", "Unconfined is not allowed")
        if (ctx.get("appArmorProfile") or {}).get("type") == "Unconfined":
            self.refuse(f"{where}.appArmorProfile.type", "Unconfined is not allowed")
        if ctx.get("procMount") not in (None, "Default"):
            self.refuse(f"{where}.procMount", "only the Default proc mount is allowed")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            self.refuse(f"{where}.windowsOptions.hostProcess", "host processes are not allowed")
        selinux = ctx.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            self.refuse(f"{where}.seLinuxOptions", "custom SELinux users, roles and types are not allowed")
        for i, sysctl in enumerate(ctx.get("sysctls") or []):
            if sysctl.get("name") not in SAFE_SYSCTLS:
                self.refuse(f"{where}.sysctls[{i}]", f"sysctl {sysctl.get('name')} is not a safe one")
        if not restricted:
            return
        if ctx.get("runAsUser") == 0:
            self.refuse(f"{where}.runAsUser", "running as root (uid 0) is not allowed")
        if ctx.get("runAsNonRoot") is False:
            self.refuse(f"{where}.runAsNonRoot", "must not be false")
        if container and ctx.get("allowPrivilegeEscalation"):
            self.refuse(f"{where}.allowPrivilegeEscalation", "must be false")

    def final(self, role: str, spec: dict[str, Any]) -> None:
        """What the merged pod ends up with, where the profile needs a value (not just the absence of one);
        a rule an override was already refused for is not repeated."""
        if self.policy.profile != "restricted":
            return
        where = f"the {role} pod (spec.cluster.podOverrides merged)"
        pod, container = spec.get("securityContext") or {}, spec["containers"][0].get("securityContext") or {}
        seccomp = (container.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        needed = [
            ("runAsNonRoot", bool(container.get("runAsNonRoot") or pod.get("runAsNonRoot")), "must be true"),
            ("seccompProfile", seccomp in ("RuntimeDefault", "Localhost"), "must be RuntimeDefault or Localhost"),
            ("allowPrivilegeEscalation", container.get("allowPrivilegeEscalation") is False, "must be false"),
            (
                "capabilities",
                "ALL" in ((container.get("capabilities") or {}).get("drop") or []),
                "drop must include ALL",
            ),
        ]
        for key, ok, rule in needed:
            if not ok and not any(key in problem for problem in self.problems):
                self.refuse(where, f"securityContext.{key} {rule}")


def pod_problems(job: CPTJob, rayjob: dict[str, Any], policy: PodPolicy, trainer_image: str) -> list[str]:
    """Every way the job's Ray pods break `policy`, one line each naming the field (empty: allowed)."""
    check = _Checker(policy)
    cluster = job.spec.cluster
    if cluster.image and not matches(cluster.image, allowed_images(policy, trainer_image)):
        allowed = ", ".join(allowed_images(policy, trainer_image))
        check.refuse("spec.cluster.image", f"'{cluster.image}' is not an allowed image (allowed: {allowed})")
    check.service_account("spec.cluster.serviceAccountName", cluster.service_account_name)
    check.priority_class("spec.cluster.priorityClassName", cluster.priority_class_name)
    check.tolerations(
        "spec.cluster.tolerations", [t.model_dump(by_alias=True, exclude_none=True) for t in cluster.tolerations]
    )
    for i, override in enumerate(cluster.pod_overrides):
        where = f"spec.cluster.podOverrides[{i}]"
        check.service_account(f"{where}.serviceAccountName", override.service_account_name)
        check.priority_class(f"{where}.priorityClassName", override.priority_class_name)
        check.tolerations(f"{where}.tolerations", override.tolerations)
        if (
            override.scheduler_name
            and policy.allowed_scheduler_names
            and not matches(override.scheduler_name, policy.allowed_scheduler_names)
        ):
            check.refuse(f"{where}.schedulerName", f"scheduler '{override.scheduler_name}' is not allowed")
        check.env(where, override.env, override.env_from)
        check.volumes(where, override.volumes)
        check.context(f"{where}.securityContext", override.security_context, container=False)
        check.context(f"{where}.containerSecurityContext", override.container_security_context, container=True)
        for key, value in override.annotations.items():
            if "apparmor" in key and "unconfined" in str(value).lower() and policy.profile != "privileged":
                check.refuse(f"{where}.annotations.{key}", "an unconfined AppArmor profile is not allowed")
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    check.final("head", cluster_spec["headGroupSpec"]["template"]["spec"])
    for group in cluster_spec["workerGroupSpecs"]:
        check.final("worker", group["template"]["spec"])
    return list(dict.fromkeys(check.problems))
