//! The real operator binary as a child process of a test, scoped to the test's namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::testbed;

pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
    starts: u32,
    /// Where this operator serves /metrics.
    pub metrics_port: u16,
    /// Environment of every start.
    env: Vec<(String, String)>,
}

/// A port that was free a moment ago (the OS picks it; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Operator {
    /// Starts `kubedirector run` on `context`, reconciling only `watch_ns`, with `system_ns` as its own
    /// namespace (system catalog, kd-global-config).
    pub fn start(context: &str, watch_ns: &str, system_ns: &str) -> Operator {
        Self::start_with(
            &["--context", context, "--watch-namespace", watch_ns],
            watch_ns,
            system_ns,
        )
    }

    /// Starts `kubedirector run` with the given member-selection arguments; `name` names the log.
    pub fn start_with(selection: &[&str], name: &str, system_ns: &str) -> Operator {
        Self::start_with_env(selection, name, system_ns, &[])
    }

    /// `start_with`, with extra environment variables for this and every later start.
    pub fn start_with_env(selection: &[&str], name: &str, system_ns: &str, env: &[(&str, String)]) -> Operator {
        let log = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/test-logs/operator-{name}.log"));
        std::fs::create_dir_all(log.parent().expect("log dir")).expect("create target/test-logs");
        let kubeconfig = testbed::kubeconfig_path().display().to_string();
        let metrics_port = free_port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut args: Vec<String> = ["run", "--namespace", system_ns, "--metrics-addr", &metrics_addr]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !selection.contains(&"--kubeconfig") {
            args.extend(["--kubeconfig".to_string(), kubeconfig]);
        }
        // One replica per test unless the test asks for shards.
        if !selection.contains(&"--shards") {
            args.extend(["--shards".to_string(), "0".to_string()]);
        }
        args.extend(selection.iter().map(|s| s.to_string()));
        let mut op = Operator {
            child: None,
            log,
            args,
            starts: 0,
            metrics_port,
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        };
        op.restart();
        op
    }

    /// Starts the process again (after `kill`), appending to the same log.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Starts the process again with extra environment variables.
    pub fn restart_with(&mut self, env: &[(&str, String)]) {
        self.kill();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let err = file.try_clone().expect("log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_kubedirector"))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("KD_TEST_RUST_LOG").unwrap_or_else(|_| "info,kubedirector=debug".to_string()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the kubedirector binary");
        self.child = Some(child);
        self.starts += 1;
    }

    /// The operator's Prometheus text from /metrics; empty while the endpoint is not up yet.
    /// Any path of the operator's HTTP endpoint (status code and body); `None` while it is not up.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        crate::http::request(self.metrics_port, "GET", path, None)
    }

    pub fn metrics(&self) -> String {
        crate::http::request(self.metrics_port, "GET", "/metrics", None)
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit by itself; true if it did.
    pub async fn exited_within(&mut self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => return true,
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        false
    }

    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// SIGTERM, then waits up to `limit` for a graceful exit (shards handed over).
    pub async fn terminate(&mut self, limit: std::time::Duration) -> bool {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let exited = self.exited_within(limit).await;
        self.kill();
        exited
    }

    /// SIGKILL: no chance to finish anything, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
