//! kind clusters (contexts `kind-<name>`) with kwok inside: fake nodes labelled `type=kwok` carry the
//! loadtest pods (the CRs' roles ask for them by node affinity), the API server audits the operator's
//! writes into the run directory. The operator replicas run as local processes against the kind
//! contexts, as with the other providers, so that the harness can kill them and read their figures.
//!
//! Nothing of this can run on a machine without Docker images; `--dry-run` prints every command and
//! file, and the unit tests check what is generated.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Bed, Teardown, run};

pub const KWOK_VERSION: &str = "v0.8.0";

/// One step: a file to write, or a command to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Write { path: PathBuf, content: String },
    Run { argv: Vec<String> },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write { path, content } => {
                writeln!(f, "# write {}", path.display())?;
                writeln!(f, "cat > {} <<'EOF'\n{}EOF", path.display(), content)
            }
            Step::Run { argv } => writeln!(f, "{}", argv.join(" ")),
        }
    }
}

fn argv(parts: &[&str]) -> Step {
    Step::Run {
        argv: parts.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn cluster_names(clusters: u32) -> Vec<String> {
    (1..=clusters).map(|i| format!("kd-lt-{i}")).collect()
}

/// kind's cluster configuration: the audit policy mounted into the control-plane node and the
/// audit log written to a host directory of the run.
pub fn kind_config(policy: &Path, audit_dir: &Path) -> String {
    format!(
        r#"kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
  extraMounts:
  - hostPath: {policy}
    containerPath: /etc/kubernetes/kd-audit/policy.yaml
    readOnly: true
  - hostPath: {audit}
    containerPath: /var/log/kd-audit
  kubeadmConfigPatches:
  - |
    kind: ClusterConfiguration
    apiServer:
      extraArgs:
        audit-policy-file: /etc/kubernetes/kd-audit/policy.yaml
        audit-log-path: /var/log/kd-audit/audit.log
      extraVolumes:
      - name: kd-audit-policy
        hostPath: /etc/kubernetes/kd-audit/policy.yaml
        mountPath: /etc/kubernetes/kd-audit/policy.yaml
        readOnly: true
        pathType: File
      - name: kd-audit-log
        hostPath: /var/log/kd-audit
        mountPath: /var/log/kd-audit
        readOnly: false
        pathType: DirectoryOrCreate
"#,
        policy = policy.display(),
        audit = audit_dir.display()
    )
}

/// `nodes` fake nodes for kwok: Ready, roomy, labelled `type=kwok`, and untainted (the CRs select
/// them by affinity; KubeDirector roles have no tolerations).
pub fn fake_nodes(nodes: u32) -> String {
    (1..=nodes)
        .map(|i| {
            format!(
                r#"---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-{i}
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-{i}
    kubernetes.io/role: agent
status:
  allocatable: {{cpu: "1000", memory: 4Ti, pods: "1000"}}
  capacity: {{cpu: "1000", memory: 4Ti, pods: "1000"}}
"#
            )
        })
        .collect()
}

/// Every step that makes `clusters` kind clusters ready for the run, in order.
pub fn plan(run_dir: &Path, clusters: u32, nodes: u32, policy: &str) -> Vec<Step> {
    let kubeconfig = run_dir.join("kubeconfig");
    let policy_path = run_dir.join("audit-policy.yaml");
    let release = format!("https://github.com/kubernetes-sigs/kwok/releases/download/{KWOK_VERSION}");
    let mut steps = vec![
        Step::Write {
            path: policy_path.clone(),
            content: policy.to_string(),
        },
        Step::Write {
            path: run_dir.join("kind/fake-nodes.yaml"),
            content: fake_nodes(nodes),
        },
    ];
    for name in cluster_names(clusters) {
        let audit = run_dir.join(format!("kind/{name}/audit"));
        let config = run_dir.join(format!("kind/{name}/kind.yaml"));
        steps.push(argv(&["mkdir", "-p", &audit.display().to_string()]));
        steps.push(Step::Write {
            path: config.clone(),
            content: kind_config(&policy_path, &audit),
        });
        let context = format!("kind-{name}");
        let kc = kubeconfig.display().to_string();
        steps.push(argv(&[
            "kind",
            "create",
            "cluster",
            "--name",
            &name,
            "--config",
            &config.display().to_string(),
            "--kubeconfig",
            &kc,
            "--wait",
            "3m",
        ]));
        let kubectl = |args: &[&str]| {
            let mut all = vec!["kubectl", "--kubeconfig", &kc, "--context", &context];
            all.extend_from_slice(args);
            argv(&all)
        };
        for manifest in ["kwok.yaml", "stage-fast.yaml"] {
            steps.push(kubectl(&["apply", "-f", &format!("{release}/{manifest}")]));
        }
        steps.push(kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/kwok-controller",
            "--timeout",
            "3m",
        ]));
        let nodes_file = run_dir.join("kind/fake-nodes.yaml").display().to_string();
        steps.push(kubectl(&["apply", "-f", &nodes_file]));
    }
    steps
}

/// Creates the clusters (needs kind, Docker and kubectl on PATH).
pub fn up(run_dir: &Path, clusters: u32, nodes: u32, policy: &str) -> anyhow::Result<Bed> {
    let names = cluster_names(clusters);
    for step in plan(run_dir, clusters, nodes, policy) {
        match step {
            Step::Write { path, content } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, content)?;
            }
            Step::Run { argv } => {
                let (program, args) = argv.split_first().ok_or_else(|| anyhow::anyhow!("empty step"))?;
                if let Err(e) = run(Command::new(program).args(args)) {
                    let _ = delete(&names);
                    return Err(e);
                }
            }
        }
    }
    Ok(Bed {
        kubeconfig: run_dir.join("kubeconfig"),
        contexts: names.iter().map(|n| format!("kind-{n}")).collect(),
        audit_logs: Some(
            names
                .iter()
                .map(|n| run_dir.join(format!("kind/{n}/audit/audit.log")))
                .collect(),
        ),
        teardown: Some(Teardown::Kind(names)),
    })
}

pub fn delete(names: &[String]) -> anyhow::Result<()> {
    for n in names {
        run(Command::new("kind").args(["delete", "cluster", "--name", n]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_creates_each_cluster_with_kwok_and_fake_nodes() {
        let steps = plan(Path::new("/run"), 2, 3, "policy");
        let text: String = steps.iter().map(|s| s.to_string()).collect();
        for name in ["kd-lt-1", "kd-lt-2"] {
            assert!(
                text.contains(&format!(
                    "kind create cluster --name {name} --config /run/kind/{name}/kind.yaml --kubeconfig /run/kubeconfig"
                )),
                "{text}"
            );
            assert!(text.contains(&format!("--context kind-{name} apply -f https://github.com/kubernetes-sigs/kwok/releases/download/v0.8.0/kwok.yaml")));
            assert!(text.contains(&format!("--context kind-{name} apply -f /run/kind/fake-nodes.yaml")));
        }
        // files before the commands that read them
        let first_use = text.find("kind create cluster").unwrap_or(0);
        assert!(text.find("cat > /run/audit-policy.yaml").unwrap_or(usize::MAX) < first_use);
    }

    #[test]
    fn fake_nodes_are_valid_nodes_labelled_for_affinity() {
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&fake_nodes(3))
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 3);
        for d in &docs {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(d.clone()).expect("a Node");
            let labels = node.metadata.labels.expect("labels");
            assert_eq!(labels.get("type").map(String::as_str), Some("kwok"));
            assert!(node.spec.and_then(|s| s.taints).is_none());
        }
    }

    #[test]
    fn kind_config_mounts_policy_and_log_dir() {
        let v: serde_json::Value =
            serde_yaml::from_str(&kind_config(Path::new("/run/p.yaml"), Path::new("/run/a"))).expect("yaml");
        let mounts = &v["nodes"][0]["extraMounts"];
        assert_eq!(mounts[0]["hostPath"], "/run/p.yaml");
        assert_eq!(mounts[1]["hostPath"], "/run/a");
        let patch: serde_json::Value =
            serde_yaml::from_str(v["nodes"][0]["kubeadmConfigPatches"][0].as_str().expect("patch"))
                .expect("patch yaml");
        assert_eq!(
            patch["apiServer"]["extraArgs"]["audit-log-path"],
            "/var/log/kd-audit/audit.log"
        );
    }
}
