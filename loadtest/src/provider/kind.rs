//! kind clusters (contexts `kind-<name>`) with kwok inside: fake nodes labelled `type=kwok` carry the
//! loadtest pods (the CRs' roles ask for them by node affinity), the API server audits the operator's
//! writes into the run directory. The operator image is built from deploy/Dockerfile and loaded into
//! the first (home) cluster, where the Helm chart runs the replicas as pods on the real kind node;
//! they reach every cluster through a kubeconfig of the control-plane containers' addresses on the
//! kind network, with the loadtest ServiceAccount's tokens (so the audit logs see their writes). The
//! harness kills pods (grace period 0), scrapes them and reads their reconcile records through the
//! API server's pod proxy.
//!
//! Nothing of this can run on a machine without Docker images; `--dry-run` prints every command and
//! file, and the unit tests check what is generated.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Bed, Teardown, run};

pub const KWOK_VERSION: &str = "v0.8.0";

/// The operator image the kind path builds and loads.
pub const IMAGE_REPOSITORY: &str = "kubedirector-rs";
pub const IMAGE_TAG: &str = "loadtest";
/// The Helm release of the operator.
pub const RELEASE: &str = "kd";

/// One step: a file to write, a command to run, or one whose output is kept in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Write { path: PathBuf, content: String },
    Run { argv: Vec<String> },
    Capture { argv: Vec<String>, path: PathBuf },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write { path, content } => {
                writeln!(f, "# write {}", path.display())?;
                writeln!(f, "cat > {} <<'EOF'\n{}EOF", path.display(), content)
            }
            Step::Run { argv } => writeln!(f, "{}", shell_words(argv)),
            Step::Capture { argv, path } => writeln!(f, "{} > {}", shell_words(argv), path.display()),
        }
    }
}

/// The command as a shell line that can be pasted: words with spaces or shell characters quoted.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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

/// The control-plane container's address on the kind network, as captured by `plan`.
pub fn ip_file(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("kind/{name}/ip"))
}

/// Every step that makes `clusters` kind clusters ready for the run, in order: clusters with the
/// audit policy, kwok and fake nodes, each control plane's address, the operator image built and
/// loaded into the home cluster.
pub fn plan(repo: &Path, run_dir: &Path, clusters: u32, nodes: u32, policy: &str) -> Vec<Step> {
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
        steps.push(Step::Capture {
            argv: [
                "docker",
                "inspect",
                "-f",
                "{{ .NetworkSettings.Networks.kind.IPAddress }}",
                &format!("{name}-control-plane"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            path: ip_file(run_dir, &name),
        });
    }
    let image = format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}");
    let repo = repo.display().to_string();
    steps.push(argv(&[
        "docker",
        "build",
        "-f",
        &format!("{repo}/deploy/Dockerfile"),
        "-t",
        &image,
        &repo,
    ]));
    if let Some(home) = cluster_names(clusters).first() {
        steps.push(argv(&["kind", "load", "docker-image", &image, "--name", home]));
    }
    steps
}

/// What the chart needs to run the replicas of a loadtest.
#[derive(Clone, Debug)]
pub struct Deploy {
    pub replicas: u32,
    pub shards: u32,
    pub write_qps: u32,
    pub write_burst: u32,
    pub writes_in_flight: u16,
    pub watch_namespace: String,
    /// The operator's namespace: Leases, system catalog (and the release).
    pub namespace: String,
    pub log_level: String,
}

/// The kubeconfig the operator pods use: `token_kubeconfig` (the loadtest ServiceAccount's token per
/// context) with each server replaced by its control-plane container's address, reachable from the
/// home cluster's pods (the kind network). `ips` are (context, address).
pub fn members_kubeconfig(token_kubeconfig: &str, ips: &[(String, String)]) -> anyhow::Result<String> {
    let mut kc: serde_json::Value = serde_yaml::from_str(token_kubeconfig)?;
    let contexts = kc["contexts"].as_array().cloned().unwrap_or_default();
    for (context, ip) in ips {
        let cluster = contexts
            .iter()
            .find(|c| c["name"] == context.as_str())
            .and_then(|c| c["context"]["cluster"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("context {context} not in the token kubeconfig"))?;
        let entry = kc["clusters"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == cluster.as_str()))
            .ok_or_else(|| anyhow::anyhow!("cluster {cluster} not in the token kubeconfig"))?;
        // kubeadm puts the node address in the API server certificate, so TLS still verifies.
        entry["cluster"]["server"] = serde_json::json!(format!("https://{}:6443", ip.trim()));
    }
    Ok(serde_yaml::to_string(&kc)?)
}

/// The chart installed into the home cluster, and the wait for its pods.
pub fn deploy_steps(repo: &Path, run_dir: &Path, home: &str, d: &Deploy) -> Vec<Step> {
    let kc = run_dir.join("kubeconfig").display().to_string();
    let members = run_dir.join("kind/members.kubeconfig").display().to_string();
    let chart = repo.join("deploy/helm/kubedirector").display().to_string();
    let sets = [
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".to_string(),
        format!("replicaCount={}", d.replicas),
        format!("shards={}", d.shards),
        format!("writeQps={}", d.write_qps),
        format!("writeBurst={}", d.write_burst),
        format!("writesInFlight={}", d.writes_in_flight),
        format!("watchNamespace={}", d.watch_namespace),
        format!("logLevel={}", d.log_level.replace(',', "\\,")),
        "multiCluster.enabled=true".to_string(),
        format!("multiCluster.homeContext={home}"),
        "debug.reconcileRecord=true".to_string(),
        // The loadtest measures reconciles; its objects are made by the harness, not users.
        "webhook.enabled=false".to_string(),
        // On the real kind node, never on a kwok fake (fake nodes carry no kubernetes.io/os label).
        "nodeSelector.kubernetes\\.io/os=linux".to_string(),
    ];
    let mut install: Vec<String> = [
        "helm",
        "install",
        RELEASE,
        &chart,
        "--kubeconfig",
        &kc,
        "--kube-context",
        home,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    install.extend(["--namespace".to_string(), d.namespace.clone()]);
    for s in sets {
        install.extend(["--set".to_string(), s]);
    }
    install.extend(["--set-file".to_string(), format!("multiCluster.kubeconfig={members}")]);
    install.extend(["--wait".to_string(), "--timeout".to_string(), "5m".to_string()]);
    vec![Step::Run { argv: install }]
}

/// Runs steps (creating parent directories of files).
pub fn execute(steps: &[Step]) -> anyhow::Result<()> {
    for step in steps {
        match step {
            Step::Write { path, content } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, content)?;
            }
            Step::Run { argv } => {
                let (program, args) = argv.split_first().ok_or_else(|| anyhow::anyhow!("empty step"))?;
                run(Command::new(program).args(args))?;
            }
            Step::Capture { argv, path } => {
                let (program, args) = argv.split_first().ok_or_else(|| anyhow::anyhow!("empty step"))?;
                let out = run(Command::new(program).args(args))?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, out)?;
            }
        }
    }
    Ok(())
}

/// Creates the clusters and the image (needs kind, Docker, kubectl on PATH).
pub fn up(repo: &Path, run_dir: &Path, clusters: u32, nodes: u32, policy: &str) -> anyhow::Result<Bed> {
    let names = cluster_names(clusters);
    if let Err(e) = execute(&plan(repo, run_dir, clusters, nodes, policy)) {
        let _ = delete(&names);
        return Err(e);
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
        pid_dirs: Vec::new(),
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
        let steps = plan(Path::new("/repo"), Path::new("/run"), 2, 3, "policy");
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
        // the image: built once from the repository, loaded into the home cluster only
        assert!(text.contains("docker build -f /repo/deploy/Dockerfile -t kubedirector-rs:loadtest /repo"));
        assert_eq!(
            text.matches("kind load docker-image kubedirector-rs:loadtest --name kd-lt-1")
                .count(),
            1
        );
        assert!(
            !text.contains("--name kd-lt-2\n")
                || !text.contains("load docker-image kubedirector-rs:loadtest --name kd-lt-2")
        );
        assert!(text.contains("kd-lt-2-control-plane > /run/kind/kd-lt-2/ip"));
        let build = text.find("docker build").unwrap_or(0);
        assert!(
            build > text.rfind("kind create cluster").unwrap_or(usize::MAX),
            "image after the clusters"
        );
    }

    #[test]
    fn members_kubeconfig_points_at_the_control_plane_addresses() {
        let token_kc = "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://127.0.0.1:40001', certificate-authority-data: Q0E=}\n- name: c2\n  cluster: {server: 'https://127.0.0.1:40002'}\ncontexts:\n- name: kind-a\n  context: {cluster: c1, user: u1}\n- name: kind-b\n  context: {cluster: c2, user: u2}\nusers:\n- name: u1\n  user: {token: t1}\n- name: u2\n  user: {token: t2}\n";
        let ips = vec![
            ("kind-a".to_string(), "172.18.0.2\n".to_string()),
            ("kind-b".to_string(), "172.18.0.3".to_string()),
        ];
        let out: kube::config::Kubeconfig =
            serde_yaml::from_str(&members_kubeconfig(token_kc, &ips).expect("rewritten")).expect("a kubeconfig");
        let server = |n: &str| {
            out.clusters
                .iter()
                .find(|c| c.name == n)
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())
        };
        assert_eq!(server("c1").as_deref(), Some("https://172.18.0.2:6443"));
        assert_eq!(server("c2").as_deref(), Some("https://172.18.0.3:6443"));
        assert_eq!(out.auth_infos.len(), 2, "tokens kept");
        assert!(members_kubeconfig(token_kc, &[("kind-z".to_string(), "1.2.3.4".to_string())]).is_err());
    }

    #[test]
    fn the_chart_runs_the_replicas_on_the_real_node_with_records_and_the_members_kubeconfig() {
        let d = Deploy {
            replicas: 3,
            shards: 32,
            write_qps: 100,
            write_burst: 200,
            writes_in_flight: 32,
            watch_namespace: "kd-loadtest".into(),
            namespace: "kubedirector".into(),
            log_level: "info,kube=warn".into(),
        };
        let steps = deploy_steps(Path::new("/repo"), Path::new("/run"), "kind-kd-lt-1", &d);
        let text: String = steps.iter().map(|s| s.to_string()).collect();
        assert!(text.starts_with("helm install kd /repo/deploy/helm/kubedirector --kubeconfig /run/kubeconfig --kube-context kind-kd-lt-1 --namespace kubedirector"), "{text}");
        for set in [
            "--set image.repository=kubedirector-rs --set image.tag=loadtest --set image.pullPolicy=Never",
            "--set replicaCount=3 --set shards=32",
            "--set multiCluster.enabled=true --set multiCluster.homeContext=kind-kd-lt-1",
            "--set debug.reconcileRecord=true",
            "--set-file multiCluster.kubeconfig=/run/kind/members.kubeconfig",
            "--set 'nodeSelector.kubernetes\\.io/os=linux'",
            "--wait",
        ] {
            assert!(text.contains(set), "{set} missing: {text}");
        }
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
