//! The real operator binary as a child process of a test, scoped to the test's namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::testbed;

pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    args: Vec<String>,
    starts: u32,
}

impl Operator {
    /// Starts `kubedirector run` on `context`, reconciling only `watch_ns`, with `system_ns` as its own
    /// namespace (system catalog, kd-global-config).
    pub fn start(context: &str, watch_ns: &str, system_ns: &str) -> Operator {
        let log = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/test-logs/operator-{watch_ns}.log"));
        std::fs::create_dir_all(log.parent().expect("log dir")).expect("create target/test-logs");
        let kubeconfig = testbed::kubeconfig_path().display().to_string();
        let args = [
            "run",
            "--kubeconfig",
            &kubeconfig,
            "--context",
            context,
            "--namespace",
            system_ns,
            "--watch-namespace",
            watch_ns,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut op = Operator {
            child: None,
            log,
            args,
            starts: 0,
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
            .env("RUST_LOG", "info,kubedirector=debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the kubedirector binary");
        self.child = Some(child);
        self.starts += 1;
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
