//! Our configcli (src/reconcile/configcli.py, installed into members) run with the machine's Python
//! against configmeta documents KubeDirector generated (`../shared/kubedirector/configmeta/`): the
//! queries app startscripts make, the Python API they import, and bad input (one line on stderr
//! naming the key, exit code 1, never a traceback).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::fake_configcli_package;

fn golden(case: &str, pod: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../shared/kubedirector/configmeta/{case}/configmeta-{pod}.json"
    ))
}

/// The module and a `bdvcli` command as the guest script installs them, in a scratch directory.
fn install() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-configcli");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("configcli.py"), kubedirector::reconcile::guest::CONFIGCLI).expect("module");
    dir
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, configmeta: &Path, prog: &str, args: &[&str]) -> Out {
    let code = format!(
        "import sys; sys.path.insert(0, {:?}); import configcli; sys.argv[0] = {prog:?}; sys.exit(configcli.main())",
        dir.display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .env("CONFIGCLI_CONFIGMETA", configmeta)
        .output()
        .expect("python3");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn get(dir: &Path, cm: &Path, key: &str) -> String {
    let out = run(dir, cm, "bdvcli", &["--get", key]);
    assert_eq!(out.code, 0, "--get {key}: {}", out.stderr);
    out.stdout
}

#[test]
fn startscript_queries_answer_from_kubedirectors_configmeta() {
    let dir = install();
    let cm = golden("spark-like", "kdss-b9w6k-0");
    let domain = "kdhs-8x2vq.demo-ns.svc.cluster.local";
    assert_eq!(get(&dir, &cm, "node.role_id"), "spark-worker");
    assert_eq!(get(&dir, &cm, "node.fqdn"), format!("kdss-b9w6k-0.{domain}"));
    assert_eq!(get(&dir, &cm, "node.depends_on"), "");
    assert_eq!(get(&dir, &cm, "version"), "7");
    assert_eq!(get(&dir, &cm, "cluster.isolated"), "false");
    // Service lookups go through two references (services → role service → role fqdns).
    assert_eq!(get(&dir, &cm, "services.spark-master"), "1");
    assert_eq!(get(&dir, &cm, "services.spark-master.1"), "spark-master");
    assert_eq!(
        get(&dir, &cm, "services.spark-master.1.spark-master.fqdns"),
        format!("kdss-7qx2m-0.{domain}")
    );
    assert_eq!(
        get(&dir, &cm, "services.spark-worker.1.spark-worker.endpoints"),
        format!("http://kdss-b9w6k-0.{domain}:8081,http://kdss-b9w6k-1.{domain}:8081")
    );
    // distros → nodegroups reference; a distro id with a slash.
    assert_eq!(
        get(&dir, &cm, "distros.bluedata/spark245.1.roles.spark-worker.flavor.cores"),
        "2"
    );
    let workers = format!("kdss-b9w6k-0.{domain},kdss-b9w6k-1.{domain}");
    assert_eq!(
        get(&dir, &cm, "distros.bluedata/spark245.1.roles.spark-worker.fqdns"),
        workers
    );
    for (flag, arg) in [
        ("--get_local_group_fqdns", None),
        ("--get_nodegroup_fqdns", Some("1")),
        ("--get_all_fqdns", None),
    ] {
        let mut args = vec![flag];
        args.extend(arg);
        let out = run(&dir, &cm, "bd_vcli", &args);
        assert_eq!(out.code, 0, "{flag}: {}", out.stderr);
        let fqdns: Vec<&str> = out.stdout.split(',').collect();
        assert_eq!(fqdns.len(), 5, "{flag}: {}", out.stdout);
        assert!(out.stdout.contains(&workers), "{flag}: {}", out.stdout);
    }
    let macro_out = run(&dir, &cm, "configmacro", &["node", "--get_self_id"]);
    assert_eq!((macro_out.code, macro_out.stdout.as_str()), (0, "3"));
    let ns = run(&dir, &cm, "configcli", &["namespace", "node", "role_id"]);
    assert_eq!((ns.code, ns.stdout.as_str()), (0, "spark-worker"));
    let version = run(&dir, &cm, "ccli", &["--version"]);
    assert_eq!(version.code, 0);

    // Config metadata through the cluster's reference; connections (a list of Secrets read as one).
    let auth = golden("authtoken", "kdss-c4m9x-0");
    assert_eq!(get(&dir, &auth, "cluster.config_metadata.1.ml_engine"), "python");
    assert_eq!(
        get(
            &dir,
            &auth,
            "distros.hpecp/training-engine.1.roles.LoadBalancer.services.gunicorn.authToken"
        ),
        "fcf26031667662681cbf28d8035b56d2"
    );
    let conn = golden("connections", "kdss-d8s4w-0");
    assert_eq!(
        get(&dir, &conn, "connections.secrets.dbcredentials.data.password"),
        "czNjcjN0IQ=="
    );
    assert_eq!(
        get(&dir, &conn, "connections.configmaps.appconfig.data.log_level"),
        "INFO"
    );
    // A connected cluster's references are rooted in it.
    assert_eq!(
        get(&dir, &conn, "connections.clusters.cassandra-peer.services.cassandra.1"),
        "seed,worker"
    );
    let keys = golden("secretkeys", "kdss-w2q7j-0");
    assert_eq!(
        get(
            &dir,
            &keys,
            "distros.bluedata/cassandra311.1.roles.seed.secret_keys.cassandra_password"
        ),
        "Pa55w0rd!"
    );
}

#[test]
fn the_python_module_reads_what_startscripts_import() {
    let dir = install();
    let cm = golden("connections", "kdss-d8s4w-0");
    let script = format!(
        r#"import sys; sys.path.insert(0, {:?})
from configcli import ConfigCli
ns = ConfigCli(shell=False).getCommandObject("namespace")
print(ns.getWithTokens(["node", "role_id"]))
print(ns.getValue("cluster.isolated"))
print(",".join(ns.getWithTokens("connections.secrets.dbcredentials.data".split("."))))
print(ns.getWithTokens(["nodegroups", "1", "roles", "spark-worker", "fqdns"])[0].split(".")[0])
m = ConfigCli().getCommandObject("macro").getSubcommandObject("nodegroup")
print(len(m.getLocalGroupHosts()))
try:
    ns.getValue("node.nope")
except KeyError as e:
    print("KeyError", "nope" in str(e))
"#,
        dir.display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("CONFIGCLI_CONFIGMETA", &cm)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "spark-worker",
            "False",
            "password,username",
            "kdss-d8s4w-0",
            "3",
            "KeyError True"
        ]
    );
}

#[test]
fn bad_input_gets_one_line_naming_the_key_and_exit_1() {
    let dir = install();
    let cm = golden("spark-like", "kdss-b9w6k-0");
    let missing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-configcli/none.json");
    for (args, cm, names) in [
        (vec!["--get", "node.nope"], cm.clone(), "nope"),
        (vec!["--get", "node.role_id.deeper"], cm.clone(), "node.role_id"),
        (vec!["--get", "nosuchspace.x"], cm.clone(), "nosuchspace"),
        (vec!["--get", "node.role_id"], missing, "cannot read"),
        (
            vec!["--cp", "--node", "x", "--src", "a", "--dest", "b"],
            cm.clone(),
            "remote copy",
        ),
        (
            vec!["--execute", "--remote_node", "x", "--script", "s"],
            cm.clone(),
            "remote execute",
        ),
    ] {
        let out = run(&dir, &cm, "bdvcli", &args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(!out.stderr.contains("Traceback"), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(names), "{args:?}: {}", out.stderr);
    }
    // What the agent did for waits and service registration: nothing, said so, no failure (upstream
    // made these no-ops too, and startscripts call them unconditionally).
    let out = run(&dir, &cm, "bdvcli", &["--wait", "services.x.1.y"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stderr.contains("dsync wait") && out.stderr.contains("not available"),
        "{}",
        out.stderr
    );
}

/// The guest script with `KD_GUEST_ROOT` at `root`, as kwok's simulated exec runs it.
fn guest(root: &Path, args: &[&str]) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(kubedirector::reconcile::guest::SCRIPT)
        .arg("kd-guest")
        .args(args)
        .env("KD_GUEST_ROOT", root)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// KubeDirector's `configure.status` (`<container>=<code>`, no newline) on a member's volume: a new
/// container keeps a success; KubeDirector's "still running" is not run a second time.
#[test]
fn the_guest_script_reads_kubedirectors_configure_status() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-configcli/guest-status");
    let _ = std::fs::remove_dir_all(&root);
    let g = root.join("opt/guestconfig");
    std::fs::create_dir_all(&g).expect("dir");
    std::fs::write(g.join("configure.status"), "kwok://old-app=0").expect("status");
    let setup = |cid: &str| guest(&root, &["setup", cid, "64", "0", "0", "py", "old", "1", "0", ""]);
    assert_eq!(
        setup("kwok://new-app"),
        "kd-result done 0 fresh",
        "kept, with configmeta written again"
    );
    let status = std::fs::read_to_string(g.join("configure.status")).expect("status");
    assert_eq!(status, "kwok://old-app=0\nkwok://new-app=0\n");
    assert_eq!(
        setup("kwok://new-app"),
        "kd-result done 0",
        "recorded for this container"
    );

    std::fs::write(g.join("configure.status"), "kwok://busy-app=").expect("status");
    assert_eq!(setup("kwok://busy-app"), "kd-result running");
}

/// `refresh` writes a configured member's configmeta.json again (KubeDirector's modes: 644 for the
/// old layout, 600 for the new) and says so; `notify` writes it in the same mode before the script.
#[test]
fn the_guest_script_refreshes_configmeta_in_the_layouts_mode() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-configcli/guest-refresh");
    let _ = std::fs::remove_dir_all(&root);
    let with_stdin = |args: &[&str], input: &str| {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(kubedirector::reconcile::guest::SCRIPT)
            .arg("kd-guest")
            .args(args)
            .env("KD_GUEST_ROOT", &root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cm = root.join("etc/guestconfig/configmeta.json");
    let mode = || std::fs::metadata(&cm).map(|m| m.permissions().mode() & 0o777).ok();
    for (layout, want, doc) in [("old", 0o644, r#"{"v":1}"#), ("new", 0o600, r#"{"v":22}"#)] {
        let len = doc.len().to_string();
        let out = with_stdin(&["refresh", "kwok://c", "64", &len, layout], doc);
        assert_eq!(out.lines().next(), Some("kd-result done 0 fresh"), "{layout}: {out}");
        assert_eq!(std::fs::read_to_string(&cm).ok().as_deref(), Some(doc), "{layout}");
        assert_eq!(mode(), Some(want), "{layout}");
    }
    // notify: configmeta first (in the layout's mode), then the startscript with its arguments.
    let g = root.join("opt/guestconfig/pkg");
    std::fs::create_dir_all(&g).expect("dir");
    let script = g.join("startscript");
    std::fs::write(&script, "#!/bin/sh\necho \"args: $*\"\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let doc = r#"{"v":3}"#;
    let len = doc.len().to_string();
    let out = with_stdin(
        &["notify", "kwok://c", "64", &len, "old", "--addnodes", "--fqdns", "a,b"],
        doc,
    );
    assert_eq!(out, "kd-result done 0 fresh\nargs: --addnodes --fqdns a,b\n");
    assert_eq!(mode(), Some(0o644));
}

/// `tgz`: KubeDirector's package, unpacked in /tmp and installed by its own script (`--user` and
/// PYTHONUSERBASE=/usr/local for the new layout), `bdvcli`/`bd_vcli` linked, once per root.
#[test]
fn the_guest_script_installs_kubedirectors_configcli_package() {
    use std::io::Write;
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-configcli/package");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("dir");
    let tgz = std::fs::read(fake_configcli_package(&base)).expect("tgz");
    for (layout, bin) in [("old", "usr/bin"), ("new", "usr/local/bin")] {
        let root = base.join(layout);
        let setup = |cid: &str| {
            let cm = b"{}";
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(kubedirector::reconcile::guest::SCRIPT)
                .arg("kd-guest")
                .args([
                    "setup",
                    cid,
                    "64",
                    "2",
                    &tgz.len().to_string(),
                    "tgz",
                    layout,
                    "0",
                    "0",
                    "",
                ])
                .env("KD_GUEST_ROOT", &root)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sh");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(cm).expect("configmeta");
            stdin.write_all(&tgz).expect("package");
            drop(stdin);
            String::from_utf8_lossy(&child.wait_with_output().expect("wait").stdout).into_owned()
        };
        let out = setup("kwok://a");
        assert!(out.starts_with("kd-result done 0 fresh"), "{layout}: {out}");
        let calls = std::fs::read_to_string(root.join("configcli-install.calls")).unwrap_or_default();
        let want = if layout == "new" {
            "args=--user PYTHONUSERBASE=/usr/local\n"
        } else {
            "args= PYTHONUSERBASE=/usr/local\n"
        };
        assert_eq!(calls, want, "{layout}");
        for link in ["bdvcli", "bd_vcli"] {
            let out = Command::new(root.join(bin).join(link))
                .arg("--get")
                .arg("x")
                .output()
                .expect(link);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "kubedirector configcli --get x\n",
                "{layout}"
            );
        }
        assert!(!root.join("tmp/configcli.tgz").exists() && !root.join("tmp/configcli-1.0").exists());
        // A new container on the same root: configcli is there, the package is not installed again.
        std::fs::remove_file(root.join("opt/guestconfig/configure.status")).expect("status");
        assert!(setup("kwok://b").starts_with("kd-result done 0"), "{layout}");
        let calls = std::fs::read_to_string(root.join("configcli-install.calls")).unwrap_or_default();
        assert_eq!(calls.lines().count(), 1, "{layout}: {calls}");
    }
}
