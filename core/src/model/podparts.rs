//! The parts of a member's pod template that KubeDirector defines and that existing volumes, backup
//! tools and app images depend on: the persisted directories, the storage init container (and its
//! marker, so a volume KubeDirector seeded is never seeded again), the in-memory volumes, the systemd
//! mounts, the DNS hook. Names and paths are KubeDirector's; the scripts are this project's.

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, ExecAction, HostPathVolumeSource, Lifecycle, LifecycleHandler,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::app::SetupPackage;

/// Where the init container mounts the storage volume.
pub const INIT_MOUNT: &str = "/mnt";
/// Written into the volume once it was seeded (KubeDirector's marker, under the persisted `/etc`).
pub const INIT_MARKER: &str = "/mnt/etc/kubedirector.init";
/// The copy's progress, which KubeDirector reports as `storageInitProgress`.
pub const INIT_PROGRESS: &str = "/mnt/etc/kubedirector-init-progress-bar.log";
/// Size limit of each in-memory volume, whatever the role's memory (KubeDirector's constant).
pub const TMPFS_SIZE: &str = "20Gi";
/// In-memory volumes by name and mount path; backup tools skip them by these names.
pub const TMPFS: [(&str, &str); 3] = [
    ("tmpfs-tmp", "/tmp"),
    ("tmpfs-run", "/run"),
    ("tmpfs-run-lock", "/run/lock"),
];

/// The directories of a role kept on its storage volume: `/etc` always, the directories the role's
/// setup package writes (by layout), then the app's; a directory inside one already kept is
/// dropped, and one that contains kept ones replaces them.
pub fn persisted_dirs(app_dirs: &[String], package: Option<&SetupPackage>) -> Vec<String> {
    let mut wanted: Vec<String> = vec!["/etc".to_string()];
    match package {
        Some(p) if p.use_new_setup_layout == Some(true) => wanted.extend(
            [
                "/opt/guestconfig",
                "/var/log/guestconfig",
                "/usr/local/bin",
                "/usr/local/lib",
            ]
            .map(String::from),
        ),
        Some(_) => wanted.extend(["/opt", "/usr"].map(String::from)),
        None => {}
    }
    wanted.extend(app_dirs.iter().cloned());
    let mut out: Vec<String> = Vec::new();
    for dir in wanted {
        let dir = clean(&dir);
        if out.iter().any(|kept| within(&dir, kept)) {
            continue;
        }
        match out.iter().position(|kept| within(kept, &dir)) {
            // The wider directory takes the place of the first one it contains.
            Some(first) => {
                out[first] = dir.clone();
                let mut seen = false;
                out.retain(|kept| {
                    if !within(kept, &dir) {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => out.push(dir),
        }
    }
    out
}

/// `/a//b/` → `/a/b`.
fn clean(dir: &str) -> String {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    format!("/{}", parts.join("/"))
}

/// `dir` is `parent` or below it.
fn within(dir: &str, parent: &str) -> bool {
    dir == parent || parent == "/" || dir.strip_prefix(parent).is_some_and(|rest| rest.starts_with('/'))
}

/// The init container that copies the image's persisted directories into a new storage volume,
/// once: it does nothing when the marker is there, whoever seeded the volume.
pub fn storage_init(image: Option<String>, resources: &ResourceRequirements, dirs: &[String]) -> Container {
    let list = dirs.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(" ");
    // rsync when the image has it (it reports progress), else cp; both keep ownership and modes.
    let script = format!(
        "if [ -f {INIT_MARKER} ]; then exit 0; fi; mkdir -p {INIT_MOUNT}/etc; \
         if rsync --version >/dev/null 2>&1; then \
         rsync -ax --relative --info=progress2 --no-inc-recursive {list} {INIT_MOUNT} > {INIT_PROGRESS} || exit 1; \
         else cp -ax --parents {list} {INIT_MOUNT} || exit 1; fi; touch {INIT_MARKER}"
    );
    Container {
        name: "init".to_string(),
        image,
        command: Some(vec!["/bin/bash".to_string()]),
        args: Some(vec!["-c".to_string(), script]),
        resources: Some(resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: super::names::STORAGE_CLAIM.to_string(),
            mount_path: INIT_MOUNT.to_string(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The in-memory volumes and their mounts.
pub fn tmpfs() -> (Vec<Volume>, Vec<VolumeMount>) {
    TMPFS
        .iter()
        .map(|(name, path)| {
            let volume = Volume {
                name: name.to_string(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".to_string()),
                    size_limit: Some(Quantity(TMPFS_SIZE.to_string())),
                }),
                ..Default::default()
            };
            let mount = VolumeMount {
                name: name.to_string(),
                mount_path: path.to_string(),
                ..Default::default()
            };
            (volume, mount)
        })
        .unzip()
}

/// The host's cgroup tree for apps that run systemd, unless the nodes' runtime gives containers
/// their own (kd-global-config `nativeSystemdSupport`).
pub fn systemd(required: bool, native: bool) -> (Vec<Volume>, Vec<VolumeMount>) {
    if !required || native {
        return (Vec::new(), Vec::new());
    }
    let host = |name: &str, path: &str| Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: None,
        }),
        ..Default::default()
    };
    let volumes = vec![
        host("cgroupfs", "/sys/fs/cgroup"),
        host("systemd", "/sys/fs/cgroup/systemd"),
    ];
    let mounts = vec![
        VolumeMount {
            name: "cgroupfs".to_string(),
            mount_path: "/sys/fs/cgroup".to_string(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "systemd".to_string(),
            mount_path: "/sys/fs/cgroup/systemd".to_string(),
            ..Default::default()
        },
    ];
    (volumes, mounts)
}

/// Once the container starts: the headless Service's domain goes first in resolv.conf's search
/// list (so members resolve each other by short name), and /run gets the usual 755.
pub fn dns_hook(headless: &str) -> Lifecycle {
    let script = format!(
        "exec 2>>/tmp/kd-postcluster.log; n=60; while [ $n -gt 0 ] && [ ! -s /etc/resolv.conf ]; do sleep 1; n=$((n-1)); done; \
         sed 's/^search \\([^ ]*\\)/search {headless}.\\1 \\1/' /etc/resolv.conf > /tmp/resolv.conf.kd \
         && cat /tmp/resolv.conf.kd > /etc/resolv.conf; rm -f /tmp/resolv.conf.kd; chmod 755 /run; exit 0"
    );
    Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["/bin/bash".to_string(), "-c".to_string(), script]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn etc_is_always_persisted_then_the_apps_directories() {
        assert_eq!(persisted_dirs(&dirs(&["/home"]), None), dirs(&["/etc", "/home"]));
        assert_eq!(persisted_dirs(&[], None), dirs(&["/etc"]));
    }

    #[test]
    fn setup_layouts_add_their_directories() {
        let old = SetupPackage {
            package_url: "file:///p.tgz".to_string(),
            use_new_setup_layout: None,
        };
        assert_eq!(persisted_dirs(&[], Some(&old)), dirs(&["/etc", "/opt", "/usr"]));
        let new = SetupPackage {
            use_new_setup_layout: Some(true),
            ..old
        };
        assert_eq!(
            persisted_dirs(&dirs(&["/data"]), Some(&new)),
            dirs(&[
                "/etc",
                "/opt/guestconfig",
                "/var/log/guestconfig",
                "/usr/local/bin",
                "/usr/local/lib",
                "/data"
            ])
        );
    }

    #[test]
    fn subdirectories_collapse_into_their_parent() {
        let old = SetupPackage {
            package_url: "file:///p.tgz".to_string(),
            use_new_setup_layout: None,
        };
        // Inside a kept directory: dropped.
        assert_eq!(
            persisted_dirs(&dirs(&["/usr/lib/app", "/etc/x/", "/srv"]), Some(&old)),
            dirs(&["/etc", "/opt", "/usr", "/srv"])
        );
        // Containing kept ones: takes the place of the first.
        let new = SetupPackage {
            use_new_setup_layout: Some(true),
            ..old
        };
        assert_eq!(
            persisted_dirs(&dirs(&["/usr/local", "/var"]), Some(&new)),
            dirs(&["/etc", "/opt/guestconfig", "/var", "/usr/local"])
        );
        assert_eq!(
            persisted_dirs(&dirs(&["/etcetera"]), None),
            dirs(&["/etc", "/etcetera"])
        );
    }

    #[test]
    fn the_init_container_does_nothing_on_a_seeded_volume() {
        let c = storage_init(
            Some("img".into()),
            &ResourceRequirements::default(),
            &dirs(&["/etc", "/home"]),
        );
        let script = &c.args.as_ref().expect("args")[1];
        assert!(script.starts_with(&format!("if [ -f {INIT_MARKER} ]; then exit 0; fi")));
        assert!(script.ends_with(&format!("touch {INIT_MARKER}")));
        assert!(script.contains("'/etc' '/home'"));
        assert_eq!(c.security_context.and_then(|s| s.run_as_user), Some(0));
        assert_eq!(c.name, "init");
    }

    #[test]
    fn systemd_mounts_only_without_native_support() {
        assert_eq!(systemd(true, false).0.len(), 2);
        assert!(systemd(true, true).0.is_empty());
        assert!(systemd(false, false).0.is_empty());
    }
}
