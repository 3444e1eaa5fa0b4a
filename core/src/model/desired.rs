//! Desired child objects of a KubeDirectorCluster: the headless Service, one StatefulSet per role and
//! one Service per member. Every object carries a digest of its own desired state (SPEC_HASH), so the
//! apply step writes only what changed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeDevice, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::api::cluster::{MemberStatus, RoleSpec};
use crate::api::common::ServiceType;

use super::catalog::{ResolvedApp, ResolvedRole};
use super::labels::{self, cluster_labels, merged};
use super::names;
use super::podparts;
use super::settings::Settings;
use super::validate::parse_quantity;

pub const NVIDIA_PREFIX: &str = "nvidia.com/";
/// The member container's name (KubeDirector's): the one whose state a member's state follows.
pub const APP_CONTAINER: &str = "app";
const DEFAULT_BLOCK_PREFIX: &str = "/dev/kdblock";
/// KubeDirector's size of a block device when the role names none.
const DEFAULT_BLOCK_SIZE: &str = "1Gi";
/// The headless Service's placeholder port (KubeDirector's).
const HEADLESS_PORT: i32 = 8888;

/// Facts about the cluster shared by every child.
#[derive(Clone, Debug)]
pub struct ClusterFacts<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub app: &'a ResolvedApp,
    pub settings: &'a Settings,
    pub headless_name: String,
    pub service_type: ServiceType,
}

impl ClusterFacts<'_> {
    pub fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
            kind: "KubeDirectorCluster".to_string(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            controller: Some(true),
            // As KubeDirector sets it (and without the RBAC on the cluster's finalizers `true` needs).
            block_owner_deletion: Some(false),
        }
    }

    /// `labels` with the cluster's bucket: on everything but a StatefulSet's selector, which is
    /// KubeDirector's (immutable, and StatefulSets made by it or before the label have none).
    fn bucketed(&self, labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels::with_bucket(labels, self.namespace, self.name)
    }

    fn meta(&self, name: &str, labels: BTreeMap<String, String>, annotations: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![self.owner()]),
            ..Default::default()
        }
    }
}

/// Digest of an object's desired state, stored in its SPEC_HASH annotation.
pub fn spec_hash<T: Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    format!("{:016x}", names::fnv1a64(text.as_bytes()))
}

fn stamp(meta: &mut ObjectMeta, hash: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::SPEC_HASH.to_string(), hash);
}

/// The cluster's headless Service: DNS for every member, ready or not.
pub fn headless_service(c: &ClusterFacts) -> Service {
    let labels = merged(
        &c.bucketed(labels::service_labels(c.name, c.app, None)),
        &[&c.settings.service_labels],
    );
    let annotations = merged(&labels::app_annotations(c.app), &[&c.settings.service_annotations]);
    let mut svc = Service {
        metadata: c.meta(&c.headless_name, labels, annotations),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            // KubeDirector's placeholder port: a Service without ports has no endpoints on older
            // Kubernetes versions, and adopted headless Services have it.
            ports: Some(vec![ServicePort {
                name: Some("port".to_string()),
                port: HEADLESS_PORT,
                target_port: Some(IntOrString::Int(HEADLESS_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            selector: Some(BTreeMap::from([(labels::HEADLESS.to_string(), c.name.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hash = spec_hash(&(&svc.metadata.labels, &svc.metadata.annotations, &svc.spec));
    stamp(&mut svc.metadata, hash);
    svc
}

/// One member's Service, or `None` when its role opens no port (status says "n/a").
/// The member's Service, named as its status records it; a member with an auth token carries it
/// in the annotation KubeDirector uses (`kubedirector.hpe.com/kd-auth-token`).
pub fn member_service(
    c: &ClusterFacts,
    role_spec: &RoleSpec,
    role: &ResolvedRole,
    m: &MemberStatus,
) -> Option<Service> {
    let (pod, name) = (m.pod.as_str(), m.service.as_str());
    let ports: Vec<ServicePort> = role
        .ported_services()
        .map(|(svc, port)| ServicePort {
            // KubeDirector's names: the URL scheme (or `generic`) and the service id.
            name: Some(format!(
                "{}-{}",
                svc.endpoint
                    .as_set()
                    .and_then(|e| e.url_scheme.as_deref())
                    .unwrap_or("generic"),
                svc.id
            )),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let empty = BTreeMap::new();
    let labels = merged(
        &c.bucketed(labels::service_labels(c.name, c.app, Some(&role.id))),
        &[
            &c.settings.service_labels,
            role_spec.service_labels.as_ref().unwrap_or(&empty),
        ],
    );
    let mut annotations = merged(
        &labels::app_annotations(c.app),
        &[
            &c.settings.service_annotations,
            role_spec.service_annotations.as_ref().unwrap_or(&empty),
        ],
    );
    if let Some(token) = &m.auth_token {
        annotations.insert(labels::AUTH_TOKEN.to_string(), token.clone());
    }
    let mut svc = Service {
        metadata: c.meta(name, labels, annotations),
        spec: Some(ServiceSpec {
            type_: Some(c.service_type.as_str().to_string()),
            selector: Some(BTreeMap::from([(labels::POD_NAME.to_string(), pod.to_string())])),
            publish_not_ready_addresses: Some(true),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hash = spec_hash(&(&svc.metadata.labels, &svc.metadata.annotations, &svc.spec));
    stamp(&mut svc.metadata, hash);
    Some(svc)
}

/// Inputs of one role's StatefulSet beyond the shared cluster facts.
pub struct RoleInput<'a> {
    pub spec: &'a RoleSpec,
    pub role: &'a ResolvedRole,
    pub statefulset_name: &'a str,
    pub replicas: i32,
    /// Storage class for `storage` (resolved against kd-global-config and the cluster default).
    pub storage_class: Option<String>,
    pub block_storage_class: Option<String>,
}

/// Any `nvidia.com/` resource (GPUs, MIG slices, …) with a non-zero amount.
pub fn gpu_requested(spec: &RoleSpec) -> bool {
    let any = |m: &Option<BTreeMap<String, Quantity>>| {
        m.iter()
            .flatten()
            .any(|(k, q)| k.starts_with(NVIDIA_PREFIX) && parse_quantity(q).unwrap_or(0.0) > 0.0)
    };
    any(&spec.resources.limits) || any(&spec.resources.requests)
}

pub fn block_device_paths(spec: &RoleSpec) -> Vec<String> {
    let Some(block) = &spec.block_storage else {
        return Vec::new();
    };
    let prefix = block.path_prefix.as_deref().unwrap_or(DEFAULT_BLOCK_PREFIX);
    (0..block.num_devices.unwrap_or(1).max(0))
        .map(|i| format!("{prefix}{i}"))
        .collect()
}

fn memory_dir(name: &str, size: Option<Quantity>) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: size,
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, sub_path: Option<String>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        sub_path,
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn claim_template(
    c: &ClusterFacts,
    name: &str,
    class: Option<String>,
    size: &Quantity,
    block: bool,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        // A name, as KubeDirector's (the StatefulSet controller adds the selector's labels), and
        // the bucket, which the selector does not have.
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(c.bucketed(BTreeMap::new())),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: class,
            volume_mode: block.then(|| "Block".to_string()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A role's StatefulSet. Changes to the pod template are rolled out (KubeDirector never updated
/// templates, so a changed image or env had no effect on running clusters).
pub fn statefulset(c: &ClusterFacts, r: &RoleInput) -> StatefulSet {
    let (spec, role) = (r.spec, r.role);
    let empty = BTreeMap::new();
    let role_labels = cluster_labels(c.name, c.app, Some(&role.id));
    let pod_labels = merged(
        &c.bucketed(role_labels.clone()),
        &[&c.settings.pod_labels, spec.pod_labels.as_ref().unwrap_or(&empty)],
    );
    let pod_annotations = merged(
        &labels::app_annotations(c.app),
        &[
            &c.settings.pod_annotations,
            spec.pod_annotations.as_ref().unwrap_or(&empty),
        ],
    );

    let mut env: Vec<EnvVar> = spec.env.clone();
    // Without this, a GPU-less member on a GPU node would see every GPU of the node.
    if !gpu_requested(spec) && !env.iter().any(|e| e.name == "NVIDIA_VISIBLE_DEVICES") {
        env.push(EnvVar {
            name: "NVIDIA_VISIBLE_DEVICES".to_string(),
            value: Some("void".to_string()),
            ..Default::default()
        });
    }
    // The new setup layout installs configcli's Python module under /usr/local.
    let new_layout = role
        .setup_package
        .as_ref()
        .is_some_and(|p| p.use_new_setup_layout == Some(true));
    if new_layout && !env.iter().any(|e| e.name == "PYTHONUSERBASE") {
        env.push(EnvVar {
            name: "PYTHONUSERBASE".to_string(),
            value: Some("/usr/local".to_string()),
            ..Default::default()
        });
    }

    // Mounts in KubeDirector's order: persisted directories, in-memory volumes, secret, systemd.
    let image = role.image.clone();
    let mut claims = Vec::new();
    let mut init_containers = Vec::new();
    let mut mounts = Vec::new();
    if let Some(storage) = &spec.storage {
        claims.push(claim_template(
            c,
            names::STORAGE_CLAIM,
            r.storage_class.clone(),
            &storage.size,
            false,
        ));
        let dirs = podparts::persisted_dirs(&role.persist_dirs, role.setup_package.as_ref());
        init_containers.push(podparts::storage_init(image.clone(), &spec.resources, &dirs));
        for d in &dirs {
            mounts.push(mount(
                names::STORAGE_CLAIM,
                d,
                Some(d.trim_start_matches('/').to_string()),
                false,
            ));
        }
    }
    let (mut volumes, tmpfs_mounts) = podparts::tmpfs();
    mounts.extend(tmpfs_mounts);
    if let Some(secret) = &spec.secret {
        let name = format!("secret-vol-{}", secret.name);
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: secret.default_mode,
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(
            &name,
            &secret.mount_path,
            None,
            secret.read_only.unwrap_or(false),
        ));
    }
    let (systemd_volumes, systemd_mounts) =
        podparts::systemd(c.app.systemd_required, c.settings.native_systemd_support);
    volumes.extend(systemd_volumes);
    mounts.extend(systemd_mounts);
    if let Some(size) = &spec.shared_memory {
        volumes.push(memory_dir("kd-shm", Some(size.clone())));
        mounts.push(mount("kd-shm", "/dev/shm", None, false));
    }
    for (i, projection) in spec.volume_projections.iter().enumerate() {
        let name = format!("kd-proj-{i}");
        let read_only = projection.read_only.unwrap_or(false);
        volumes.push(Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: projection.pvc_name.clone(),
                read_only: read_only.then_some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount(&name, &projection.mount_path, None, read_only));
    }

    let mut devices = Vec::new();
    if let Some(block) = &spec.block_storage {
        let size = block
            .size
            .clone()
            .unwrap_or_else(|| Quantity(DEFAULT_BLOCK_SIZE.to_string()));
        for (i, path) in block_device_paths(spec).into_iter().enumerate() {
            let claim = names::block_claim(i);
            claims.push(claim_template(c, &claim, r.block_storage_class.clone(), &size, true));
            devices.push(VolumeDevice {
                name: claim,
                device_path: path,
            });
        }
    }

    let ports: Vec<ContainerPort> = role
        .ported_services()
        .map(|(svc, port)| ContainerPort {
            name: Some(svc.id.clone()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        })
        .collect();
    let app_container = Container {
        name: APP_CONTAINER.to_string(),
        image,
        resources: Some(spec.resources.clone()),
        ports: (!ports.is_empty()).then_some(ports),
        env: (!env.is_empty()).then_some(env),
        stdin: role.container_spec.stdin,
        tty: role.container_spec.tty,
        security_context: (!c.app.capabilities.is_empty()).then(|| SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(c.app.capabilities.clone()),
                drop: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        volume_devices: (!devices.is_empty()).then_some(devices),
        lifecycle: Some(podparts::dns_hook(&c.headless_name)),
        ..Default::default()
    };

    // KubeDirector's selector: every label of the role (StatefulSets made before kept theirs, as the
    // selector is immutable and never sent again).
    let selector = role_labels.clone();
    let mut sts = StatefulSet {
        metadata: c.meta(
            r.statefulset_name,
            c.bucketed(role_labels),
            labels::app_annotations(c.app),
        ),
        spec: Some(StatefulSetSpec {
            replicas: Some(r.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            service_name: Some(c.headless_name.clone()),
            pod_management_policy: Some("Parallel".to_string()),
            // PVCs follow their pods: deleted on scale-down and garbage-collected with the StatefulSet.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".to_string()),
                when_scaled: Some("Delete".to_string()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![app_container],
                    init_containers: (!init_containers.is_empty()).then_some(init_containers),
                    volumes: Some(volumes),
                    affinity: spec.affinity.clone(),
                    service_account_name: spec.service_account_name.clone(),
                    // A token only for members that name the account they need it for.
                    automount_service_account_token: Some(spec.service_account_name.is_some()),
                    ..Default::default()
                }),
            },
            volume_claim_templates: (!claims.is_empty()).then_some(claims),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hash = spec_hash(&(&sts.metadata.labels, &sts.metadata.annotations, &sts.spec));
    stamp(&mut sts.metadata, hash);
    sts.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(
        labels::ROLE_INPUTS.to_string(),
        super::rollout::role_inputs(spec, role.image.as_deref().unwrap_or_default()),
    );
    sts
}
