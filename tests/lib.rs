//! Shared helpers for weir's end-to-end tests and benchmarks: the compiled guests, the
//! `weir` binary, a throwaway Postgres schema, a tansu broker and a registry server, each
//! cleaned up when dropped.
//!
//! The guests under `guests/` are built for wasm32-wasip2 by this crate's build script;
//! [`guest_path`] finds them.

pub mod grafana;
pub mod native;
pub mod prometheus;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the built guest components are.
pub const GUEST_DIR: &str = env!("WEIR_GUEST_DIR");

/// The path of the built guest `name` (`passthrough`, `fixture_spin`, …).
pub fn guest_path(name: &str) -> PathBuf {
    let path = PathBuf::from(GUEST_DIR).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} was not built: {} is missing",
        path.display()
    );
    path
}

/// The path of the `weir` command line under test (see `bin/weir_under_test.rs`).
///
/// Only integration tests of this crate get the variable naming it; it is read at run time
/// so this library also builds for the benches.
pub fn weir_bin() -> PathBuf {
    let mut dir = std::env::current_exe().expect("current exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("weir-under-test");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// Runs the `weir` command line under test with `args`, quiet logs and no colour.
pub fn weir(args: &[&str]) -> std::process::Output {
    Command::new(weir_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("WEIR_LOG", "warn")
        .output()
        .expect("run weir")
}

/// A two-thread tokio runtime, for tests that are not async themselves.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The repository's root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Kills a child with SIGKILL (no chance to finish anything) and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A short random lower-case suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

/// The Postgres server the tests use: `WEIR_TEST_DATABASE_URL`, else the local one.
pub fn postgres_url() -> String {
    std::env::var("WEIR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into())
}

/// A Postgres schema of its own for one test, dropped (with everything in it) on drop.
/// [`TestDb::url`] connects with that schema first on the `search_path`, so unqualified
/// tables land in it.
pub struct TestDb {
    /// The schema's name.
    pub schema: String,
    base: String,
}

impl TestDb {
    /// Creates a fresh schema.
    pub fn new() -> Self {
        let schema = unique("weir_test");
        run_sql(&postgres_url(), &format!("CREATE SCHEMA {schema}"));
        Self {
            schema,
            base: postgres_url(),
        }
    }

    /// A connection URL whose `search_path` is this schema.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base, self.schema
        )
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        run_sql(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
    }
}

/// Runs SQL on a blocking connection of its own (test setup and cleanup).
pub fn run_sql(url: &str, sql: &str) {
    let url = url.to_string();
    let sql = sql.to_string();
    // A thread of its own, so this works inside and outside a tokio runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    })
    .join()
    .expect("sql thread");
}

/// A tansu broker with in-memory storage on a free port, killed on drop.
pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub bootstrap: String,
    child: Child,
}

impl Broker {
    /// Starts tansu (from `PATH` or `~/.cargo/bin`) and waits until it accepts connections.
    pub fn start() -> Self {
        Self::spawn(free_port(), None)
    }

    /// Starts tansu advertising `advertised` (`127.0.0.1:PORT`, a [`KafkaProxy`]'s
    /// address) instead of where it listens, so that every client reaches it through
    /// the proxy.
    pub fn start_advertising(advertised: &str) -> Self {
        Self::spawn(free_port(), Some(advertised))
    }

    fn spawn(port: u16, advertised: Option<&str>) -> Self {
        let bootstrap = format!("127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &format!("tcp://{bootstrap}"),
                "--advertised-listener-url",
                &format!("tcp://{}", advertised.unwrap_or(&bootstrap)),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start tansu (install it: cargo install tansu@0.6.0 --locked --features dynostore)",
            );
        wait_for_port(&bootstrap, Duration::from_secs(30));
        Self { bootstrap, child }
    }
}

/// A tansu broker whose storage survives it being killed: tansu's SQLite storage engine
/// (its libsql build, which makes its tables itself), in a file of its own, on a fixed
/// port so that clients find it again after [`DurableBroker::kill`] and
/// [`DurableBroker::start_again`]. For the chaos tests (`make chaos` installs this build
/// into `.tools/tansu-lite`). Killed on drop.
pub struct DurableBroker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub bootstrap: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl DurableBroker {
    /// Starts the broker on a new, empty storage file.
    pub fn start() -> Self {
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        broker.start_again();
        broker
    }

    /// SIGKILLs the broker.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill9(&mut child);
        }
    }

    /// Starts the broker (again) on its port and storage.
    pub fn start_again(&mut self) {
        let bin = repo_root().join(".tools/tansu-lite/bin/tansu");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(&bin)
            .args([
                "broker",
                // tansu opens the file relative to its working directory.
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &format!("tcp://{}", self.bootstrap),
                "--advertised-listener-url",
                &format!("tcp://{}", self.bootstrap),
            ])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (make chaos installs it): {e}", bin.display()));
        self.child = Some(child);
        wait_for_port(&self.bootstrap, Duration::from_secs(30));
    }

    /// Runs `sql` on the broker's storage (while it is down), with Python's sqlite3.
    pub fn edit_storage(&self, sql: &str) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
            ])
            .arg(self.dir.path().join("tansu.db"))
            .arg(sql)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a Kafka broker that can cut off the clients with one
/// `client.id`: their connections are closed and new ones are closed as soon as their
/// first request names them, while every other client goes on. It reads the client id
/// from the first request's header (length, api key, api version, correlation id,
/// client id), which every request version librdkafka sends first carries.
pub struct KafkaProxy {
    /// `127.0.0.1:PORT` clients connect to.
    pub addr: String,
    cut: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// (client id, a handle to shut the connection) of the open connections.
    open: std::sync::Arc<std::sync::Mutex<Vec<(String, std::net::TcpStream)>>>,
}

impl KafkaProxy {
    /// A proxy listening on a free port, forwarding to `upstream` once started.
    pub fn bind() -> (Self, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (
            Self {
                addr,
                cut: Default::default(),
                open: Default::default(),
            },
            listener,
        )
    }

    /// Forwards connections from `listener` to `upstream`, on threads of its own.
    pub fn serve(&self, listener: TcpListener, upstream: String) {
        let (cut, open) = (self.cut.clone(), self.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (cut, open, upstream) = (cut.clone(), open.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = forward(client, &upstream, &cut, &open);
                });
            }
        });
    }

    /// Cuts off the clients whose `client.id` is `client_id`.
    pub fn cut(&self, client_id: &str) {
        *self.cut.lock().unwrap() = Some(client_id.to_string());
        for (id, stream) in self.open.lock().unwrap().iter() {
            if id == client_id {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Lets every client through again.
    pub fn restore(&self) {
        *self.cut.lock().unwrap() = None;
    }
}

fn forward(
    mut client: std::net::TcpStream,
    upstream: &str,
    cut: &std::sync::Mutex<Option<String>>,
    open: &std::sync::Mutex<Vec<(String, std::net::TcpStream)>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    // The first request, whole: its header names the client.
    let mut size = [0u8; 4];
    client.read_exact(&mut size)?;
    let mut request = vec![0u8; u32::from_be_bytes(size) as usize];
    client.read_exact(&mut request)?;
    let id = request
        .get(8..10)
        .map(|n| i16::from_be_bytes([n[0], n[1]]))
        .filter(|n| *n >= 0)
        .and_then(|n| request.get(10..10 + n as usize))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    if cut.lock().unwrap().as_deref() == Some(id.as_str()) {
        return Ok(());
    }
    let mut server = std::net::TcpStream::connect(upstream)?;
    server.write_all(&size)?;
    server.write_all(&request)?;
    open.lock().unwrap().push((id, client.try_clone()?));
    let (mut c2, mut s2) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Both);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    Ok(())
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS terminator (Debian's `socat`) on `127.0.0.1:PORT` in front of a plaintext TCP
/// service: clients speak TLS to it, with the certificate given. Stopped on drop.
pub struct TlsTerminator {
    /// `127.0.0.1:PORT` clients connect to.
    pub addr: String,
    child: Child,
}

impl TlsTerminator {
    /// Listens on `port`, forwarding to `upstream` (`host:port`), serving `cert`/`key`.
    pub fn start(port: u16, upstream: &str, cert: &std::path::Path, key: &std::path::Path) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:{upstream}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat (apt-get install socat)");
        wait_for_port(&addr, Duration::from_secs(10));
        Self { addr, child }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_bin() -> PathBuf {
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

/// Polls `done` every `poll` until it holds; after `timeout`, panics with `failure()` (what
/// was awaited, and whatever shows why: logs, the last answer).
pub fn wait_until(
    timeout: Duration,
    poll: Duration,
    mut done: impl FnMut() -> bool,
    failure: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(poll);
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: &str, timeout: Duration) {
    wait_until(
        timeout,
        Duration::from_millis(50),
        || std::net::TcpStream::connect(addr).is_ok(),
        || format!("nothing listening on {addr} after {timeout:?}"),
    );
}

/// weir's registry server on a free port, stored in the given database, stopped on drop.
pub struct Registry {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Registry {
    /// Starts the server on a thread of its own and waits until it listens.
    pub fn start(database_url: &str) -> Self {
        Self::start_on(database_url, 0)
    }

    /// Registers the repository's Avro schemas (`weir schemas push schemas/`), failing the
    /// test with weir's error when it cannot.
    pub fn push_schemas(&self) {
        let schemas = repo_root().join("schemas");
        let out = weir_env(
            &[
                "schemas",
                "push",
                "--registry",
                &self.url,
                schemas.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "weir schemas push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server on `port` (0: any free port), with `SO_REUSEADDR` so a test can
    /// stop it and start it again on the same port.
    pub fn start_on(database_url: &str, port: u16) -> Self {
        let database_url = database_url.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = weir::registry::server::RegistryServer::connect(&database_url)
                    .await
                    .expect("registry connects to Postgres");
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket
                    .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                    .unwrap_or_else(|e| panic!("bind registry port {port}: {e}"));
                let listener = socket.listen(128).unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("registry serves");
            })
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("registry started");
        Self {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the `weir` command line under test like [`weir`], with extra environment
/// variables set for it.
pub fn weir_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(weir_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("WEIR_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run weir")
}

/// A certificate authority made for one test with `openssl`, in a directory of its own:
/// it issues server and client certificates.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// A new CA (P-256 key, valid for two days).
    pub fn new() -> Self {
        let ca = Self {
            dir: tempfile::Builder::new()
                .prefix("weir-ca")
                .tempdir()
                .unwrap(),
        };
        ca.new_key(
            "ca.key",
            &["-x509", "-days", "2", "-out", "ca.crt"],
            &unique("weir test CA"),
        );
        ca
    }

    /// The CA's certificate (PEM), to trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for `cn` naming `names` (`DNS:localhost`, `IP:127.0.0.1`), signed by
    /// this CA: (certificate, key), PEM files in the CA's directory.
    pub fn issue(&self, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let base = cn.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let (key, csr, crt, ext) = (
            format!("{base}.key"),
            format!("{base}.csr"),
            format!("{base}.crt"),
            format!("{base}.ext"),
        );
        let mut extensions = String::from("basicConstraints=CA:FALSE\n");
        if !names.is_empty() {
            extensions = format!("{extensions}subjectAltName={}\n", names.join(","));
        }
        std::fs::write(self.dir.path().join(&ext), extensions).unwrap();
        self.new_key(&key, &["-out", &csr], cn);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        (self.dir.path().join(crt), self.dir.path().join(key))
    }

    /// `openssl req` making a P-256 key into `key` for the subject `cn`, with `more`
    /// arguments (what to write: a request, or a self-signed certificate).
    fn new_key(&self, key: &str, more: &[&str], cn: &str) {
        let subject = format!("/CN={cn}");
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            &subject,
        ];
        args.extend_from_slice(more);
        self.openssl(&args);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A Postgres cluster of its own (initdb + pg_ctl in a temporary directory, on a free
/// port), for tests that restart the server or need their own TLS. Removed on drop.
pub struct PgCluster {
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    options: String,
}

impl PgCluster {
    /// Creates and starts the cluster (as the `postgres` user when running as root, since
    /// Postgres refuses to run as root).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// As [`PgCluster::start`], serving TLS with a certificate from `ca` for `localhost`
    /// (so `verify-full` passes for host `localhost`, not for `127.0.0.1`), and asking the
    /// role `weir_cert` for a client certificate from `ca` (`cert` authentication); every
    /// other role is trusted.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&TestCa>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("weir-pg")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut options = String::new();
        if let Some(ca) = ca {
            let (cert, key) = ca.issue("localhost", &["DNS:localhost"]);
            let tls = dir.path().join("tls");
            std::fs::create_dir(&tls).unwrap();
            for (from, to) in [
                (cert, "server.crt"),
                (key, "server.key"),
                (ca.cert(), "ca.crt"),
            ] {
                std::fs::copy(from, tls.join(to)).unwrap();
            }
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                tls.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            let tls = tls.display();
            options = format!(
                " -c ssl=on -c ssl_cert_file={tls}/server.crt -c ssl_key_file={tls}/server.key \
                 -c ssl_ca_file={tls}/ca.crt"
            );
        }
        let root = running_as_root();
        if root {
            let chown = |p: &std::path::Path| {
                let ok = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(p)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "chown {} to postgres", p.display());
            };
            chown(dir.path());
            Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let port = free_port();
        let cluster = Self { port, dir, options };
        cluster.pg(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ]);
        if ca.is_some() {
            let hba = data.join("pg_hba.conf");
            let rest = std::fs::read_to_string(&hba).unwrap();
            std::fs::write(
                &hba,
                format!(
                    "hostssl all weir_cert 127.0.0.1/32 cert\nhostssl all weir_cert ::1/128 cert\n{rest}"
                ),
            )
            .unwrap();
        }
        cluster.pg_ctl("start");
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, args: &[&str]) {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", args[0]));
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.data();
        let opts = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port, self.options
        );
        let log = format!("{data}/server.log");
        self.pg(&[
            "pg_ctl", "-D", &data, "-o", &opts, "-l", &log, "-m", "fast", "-w", action,
        ]);
    }

    /// Stops and starts the server (connections are cut).
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts a stopped server.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    /// URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = Command::new(if running_as_root() {
            "runuser"
        } else {
            "pg_ctl"
        })
        .args(if running_as_root() {
            vec![
                "-u",
                "postgres",
                "--",
                "pg_ctl",
                "-D",
                &data,
                "-m",
                "immediate",
                "stop",
            ]
        } else {
            vec!["-D", &data, "-m", "immediate", "stop"]
        })
        .output();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs SQL on a connection of its own and returns its rows; panics with the SQL on error.
pub fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        tokio::spawn(conn);
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    })
}

/// Sum of the next offsets consumer group `group` has committed in `weir_offsets`: every
/// message it consumed, whatever became of it (0 until it has committed any).
pub fn committed_offsets(url: &str, group: &str) -> i64 {
    query_one_i64(
        url,
        &format!(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM weir_offsets WHERE group_id = '{group}'"
        ),
    )
}

/// Runs a query returning one `bigint` on a connection of its own; 0 when the database
/// cannot be reached or the query fails (a table not created yet, say).
pub fn query_one_i64(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        rt().block_on(async {
            let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return 0;
            };
            tokio::spawn(conn);
            client
                .query_one(sql.as_str(), &[])
                .await
                .map_or(0, |r| r.get::<_, i64>(0))
        })
    })
    .join()
    .unwrap_or(0)
}

/// sha256 of `bytes`, in hex: a guest version.
pub fn sha(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// `component` with a custom section appended: the same guest, another sha256.
pub fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"weir-test-variant";
    let payload = n.to_le_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend(section);
    out
}
