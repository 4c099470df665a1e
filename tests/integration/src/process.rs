//! Programs a test runs as child processes: the Tansu broker, and services
//! run by the `shopmesh` binary so that a test can kill one outright.
//!
//! Each runs under a shell that kills it when our end of its stdin closes,
//! so it dies with the test process even if that is killed (nextest
//! timeout) before `Drop` runs. The shell exits when the program does.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use shopmesh_platform::runtime::ServiceDef;

use crate::TestEnv;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A program under its tethering shell.
pub struct Tethered {
    shell: Child,
    /// The program's own process id (not the shell's).
    pid: u32,
}

impl Tethered {
    /// Starts `program args…` with `envs` added to this process's
    /// environment minus `SHOPMESH_*` (a developer's own settings must not
    /// leak in). The program's stdout goes to stderr: the shell's stdout
    /// carries only its pid.
    pub fn spawn<S: AsRef<OsStr>>(program: &Path, args: &[S], envs: &[(String, String)]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            // Background jobs get /dev/null as stdin: hand the pipe over as fd 3.
            // Once the program is gone the watcher goes too, so it can never
            // signal a process that reuses the pid.
            .arg(concat!(
                r#"exec 3<&0; "$@" <&- >&2 & pid=$!; echo $pid; exec >&-; "#,
                r#"{ cat <&3 >/dev/null; kill $pid 2>/dev/null; } & watcher=$!; "#,
                r#"wait $pid; status=$?; kill $watcher 2>/dev/null; exit $status"#
            ))
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHOPMESH_") {
                command.env_remove(key);
            }
        }
        command.envs(envs.iter().map(|(k, v)| (k, v)));
        let mut shell = command.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("piped stdout")).read_line(&mut line).expect("reading the pid");
        let pid =
            line.trim().parse().unwrap_or_else(|_| panic!("{}: no pid from its shell: {line:?}", program.display()));
        Self { shell, pid }
    }

    /// Whether the program has exited, and how (the shell exits with its status).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.shell.try_wait().unwrap()
    }

    /// Sends `signal` (as `kill` names it) to the program and waits up to
    /// `timeout` for it to exit; returns how it exited.
    pub async fn signal(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let sent = Command::new("sh").arg("-c").arg(format!("kill -{signal} {}", self.pid)).status().unwrap();
        assert!(sent.success(), "kill -{signal} {} failed", self.pid);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("process {} still running {timeout:?} after SIG{signal}", self.pid);
    }

    /// Closes the tether (the shell sends SIGTERM) and waits up to `grace`
    /// for the program to exit, then kills the shell.
    fn stop(&mut self, grace: Duration) {
        drop(self.shell.stdin.take());
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !matches!(self.shell.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

impl Drop for Tethered {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// One service run by `shopmesh serve <name>` in its own process, on ports
/// that stay the same across restarts (the gateway keeps its address).
pub struct ServiceProcess {
    pub def: &'static ServiceDef,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    bin: PathBuf,
    envs: Vec<(String, String)>,
    process: Option<Tethered>,
}

impl ServiceProcess {
    /// Starts `def` from the `shopmesh` binary `bin` with `env`'s settings
    /// (its database included); returns once it reports ready.
    pub async fn start(env: &TestEnv, bin: &Path, def: &'static ServiceDef) -> Self {
        let grpc_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let envs = env
            .service_source(def)
            .await
            .set("GRPC_ADDR", grpc_addr.to_string())
            .set("HTTP_ADDR", http_addr.to_string())
            .overrides_as_env();
        let mut service = Self { def, grpc_addr, http_addr, bin: bin.to_owned(), envs, process: None };
        service.restart().await;
        service
    }

    /// Starts the service again on its ports (after `kill`).
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.def.spec.name);
        let process = self.process.insert(Tethered::spawn(&self.bin, &["serve", self.def.spec.name], &self.envs));
        let ready = format!("http://{}/health/ready", self.http_addr);
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Some(status) = process.exited() {
                panic!("{} exited ({status}) before it was ready", self.def.spec.name);
            }
            if http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready after 60 s", self.def.spec.name);
    }

    /// Kills the process outright (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        let mut process = self.process.take().expect("service is running");
        process.signal("KILL", Duration::from_secs(5)).await;
    }

    /// Asks the process to stop (SIGTERM) and waits for it to exit, allowing
    /// it `grace` to drain; returns how it exited.
    pub async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        let mut process = self.process.take().expect("service is running");
        process.signal("TERM", grace).await
    }
}

/// Tansu, storing in memory, listening on `listen` and advertising `advertise`.
pub(crate) fn spawn_tansu(bin: &Path, listen: SocketAddr, advertise: SocketAddr) -> Tethered {
    let listener = format!("tcp://{listen}");
    let advertised = format!("tcp://{advertise}");
    Tethered::spawn(
        bin,
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        &[],
    )
}
