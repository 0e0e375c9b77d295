//! Test services for write-behind: a private PostgreSQL cluster with the Supabase migration
//! applied, and PostgREST 12 in front of it, each on a free loopback port.
//!
//! Both run under a small shell watchdog that stops the server (and removes the cluster's
//! folder) when the test binary's end of the watchdog's stdin closes, so no server outlives
//! the tests, even when the binary is killed. `scripts/install-test-services` installs both.
//!
//! One cluster serves the whole test binary ([`shared_postgres`]); PostgREST is cheap to
//! start, so a test that stops it starts its own with [`Postgrest::start`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// This crate is tests/kit/ of the repository.
const MIGRATIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/supabase/migrations"
);
const POSTGREST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.tools/postgrest/postgrest"
);
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// A shell running a server in the background. Dropping it closes the shell's stdin, on
/// which the shell stops the server and cleans up after it; the drop waits for that.
pub struct Watchdog {
    shell: Child,
    stdin: Option<ChildStdin>,
    /// The server's pid, as the shell reported it.
    pid: u32,
}

impl Watchdog {
    /// Runs `script` (which must start the server with `&`, `echo $!`, then `read _` and stop
    /// it) with `shell`, a command running `sh`, and `args` as `$1`, `$2`, ...
    pub fn spawn(mut shell: Command, script: &str, args: &[&str]) -> Watchdog {
        let mut shell = shell
            .args(["-c", script, "sh"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the watchdog shell");
        let stdin = shell.stdin.take();
        let mut line = String::new();
        BufReader::new(shell.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the watchdog prints the server's pid");
        let pid = line.trim().parse().unwrap_or_else(|_| {
            panic!("the watchdog exited without starting its server (its stderr says why)")
        });
        Watchdog { shell, stdin, pid }
    }

    /// Whether the server still runs. An exited server stays a zombie until the shell reaps
    /// it, which the shell does only once told to stop, so look at the process state.
    pub fn server_alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    }
}

impl Watchdog {
    /// The server's pid, to signal it or read its `/proc` entry.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

/// `sh` as the `postgres` user when we are root, since PostgreSQL refuses to run as root;
/// as ourselves otherwise.
fn cluster_owner_shell() -> Command {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "sh"]);
        command
    } else {
        Command::new("sh")
    }
}

/// A private PostgreSQL cluster with the migration applied and `authenticator` able to log
/// in over TCP with a password, as PostgREST does on Supabase.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    authenticator_password: String,
    /// The server started again by [`Postgres::restart`]; declared before `_server` so it
    /// stops before the first watchdog removes the cluster's folder.
    restarted: Option<Watchdog>,
    _server: Watchdog,
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh path under the system's temporary folder, `sessiongate-<what>-<pid>-<n>`, not yet
/// created: unique within the run and across parallel runs, and easy to find when a test
/// leaves something behind.
pub fn temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sessiongate-{what}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Postgres {
    /// A server with every migration applied.
    pub fn start() -> Postgres {
        Postgres::start_at(usize::MAX)
    }

    /// A server with the first `migrations` migrations applied: the schema of an earlier
    /// release, for upgrade tests.
    pub fn start_at(migrations: usize) -> Postgres {
        let bin = postgres_bin_dir();
        // A free port can be taken between our probe and the server's bind; then the server
        // exits, and we start over on another port.
        let mut log = String::new();
        for _ in 0..5 {
            match Self::try_start(&bin, free_port()) {
                Ok(postgres) => {
                    postgres.apply_migrations(migrations);
                    run(postgres.psql_command().args([
                        "-c",
                        &format!(
                            "alter role authenticator with login password '{}'",
                            postgres.authenticator_password
                        ),
                    ]));
                    return postgres;
                }
                Err(exited) => log = exited,
            }
        }
        panic!("postgres exited on every try; its last log:\n{log}");
    }

    /// The cluster on `port`, or the server's log when it exited instead.
    fn try_start(bin: &Path, port: u16) -> Result<Postgres, String> {
        let dir = temp_path("supabase");
        // The shell owns the folder's whole life, so that it goes even when the test binary
        // is killed mid-initdb. Then the pid goes to a closed pipe (hence SIGPIPE ignored),
        // and the stop comes at once: SIGINT (fast shutdown) is lost if it beats postgres's
        // handler, as sh starts background jobs with SIGINT ignored, so SIGTERM follows
        // (smart shutdown; there are no clients yet in that case).
        // Passwords are checked on TCP, where PostgREST connects; the socket in our own
        // folder, where the harness's psql connects, is trusted.
        let script = r#"trap '' PIPE
            mkdir -m 700 "$2" || exit 1
            "$1/initdb" -D "$2/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
                --no-sync --no-locale -E UTF8 >"$2/initdb.log" 2>&1 \
                || { cat "$2/initdb.log" >&2; rm -rf "$2"; exit 1; }
            "$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                2>>"$2/postgres.log" &
            echo $!
            read _
            kill -INT $! 2>/dev/null; kill -TERM $! 2>/dev/null; wait
            rm -rf "$2""#;
        let server = Watchdog::spawn(
            cluster_owner_shell(),
            script,
            &[
                &bin.to_string_lossy(),
                &dir.to_string_lossy(),
                &port.to_string(),
            ],
        );
        // `ready` in postmaster.pid comes after the TCP bind and the socket in our own
        // folder, so it is our server that answers on the port.
        let pid_file = dir.join("data/postmaster.pid");
        await_startup(&server, "postgres", &dir.join("postgres.log"), || {
            std::fs::read_to_string(&pid_file)
                .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|s| s.trim() == "ready"))
        })?;
        Ok(Postgres {
            port,
            dir,
            bin: bin.to_path_buf(),
            authenticator_password: random_hex(),
            restarted: None,
            _server: server,
        })
    }

    /// Applies the first `count` files of `deploy/supabase/migrations`, in order, each in
    /// one transaction.
    pub fn apply_migrations(&self, count: usize) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(MIGRATIONS)
            .expect("the migrations folder")
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        for file in files.iter().take(count) {
            run(self.psql_command().arg("-1").arg("-f").arg(file));
        }
    }

    /// Runs one SQL statement as the superuser.
    pub fn sql(&self, statement: &str) {
        run(self.psql_command().args(["-c", statement]));
    }

    fn psql_command(&self) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            // Re-applying the migration notices every object it skips; only errors matter.
            .env("PGOPTIONS", "-c client_min_messages=warning");
        command
    }

    /// The connection string PostgREST logs in with.
    fn authenticator_uri(&self) -> String {
        format!(
            "postgres://authenticator:{}@127.0.0.1:{}/postgres",
            self.authenticator_password, self.port
        )
    }
}

impl Postgres {
    /// Stops the server (fast shutdown: sessions are cut, as in an outage) and waits until
    /// its port refuses connections. The cluster's folder stays for [`Postgres::restart`].
    /// Only for a cluster of the test's own, never [`shared_postgres`].
    pub fn stop(&mut self) {
        let server = self.restarted.take();
        let pid = server.as_ref().unwrap_or(&self._server).pid();
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        wait_until(STARTUP_LIMIT, "postgres to stop", || {
            !server.as_ref().unwrap_or(&self._server).server_alive()
                && TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
        // Dropping a restarted server's watchdog reaps it; the first one waits for the end.
        drop(server);
    }

    /// Starts the server again on its port and folder, and waits until it is ready.
    pub fn restart(&mut self) {
        assert!(
            self.restarted.is_none() && !self._server.server_alive(),
            "postgres is running"
        );
        let script = r#"trap '' PIPE
            "$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                2>>"$2/postgres.log" &
            echo $!
            read _
            kill -INT $! 2>/dev/null; kill -TERM $! 2>/dev/null; wait"#;
        let server = Watchdog::spawn(
            cluster_owner_shell(),
            script,
            &[
                &self.bin.to_string_lossy(),
                &self.dir.to_string_lossy(),
                &self.port.to_string(),
            ],
        );
        let pid_file = self.dir.join("data/postmaster.pid");
        let log = self.dir.join("postgres.log");
        if let Err(log) = await_startup(&server, "postgres", &log, || {
            std::fs::read_to_string(&pid_file)
                .is_ok_and(|pid| pid.lines().nth(7).is_some_and(|s| s.trim() == "ready"))
        }) {
            panic!("postgres exited instead of starting again on its port; its log:\n{log}");
        }
        self.restarted = Some(server);
    }
}

/// The cluster shared by every test of this binary.
pub fn shared_postgres() -> &'static Postgres {
    static POSTGRES: OnceLock<Postgres> = OnceLock::new();
    POSTGRES.get_or_init(Postgres::start)
}

/// The newest PostgreSQL server that Debian's packages installed.
fn postgres_bin_dir() -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten();
    versions
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .expect(
            "PostgreSQL server binaries in /usr/lib/postgresql: run scripts/install-test-services",
        )
}

/// PostgREST serving the cluster's `public` schema. It can be stopped and started again on
/// the same port, to play an outage.
pub struct Postgrest {
    port: u16,
    db_uri: String,
    jwt_secret: String,
    logs: PathBuf,
    server: Option<Watchdog>,
}

impl Postgrest {
    pub fn start(db: &Postgres) -> Postgrest {
        assert!(
            Path::new(POSTGREST).exists(),
            "{POSTGREST} is missing: run scripts/install-test-services"
        );
        let mut postgrest = Postgrest {
            port: 0,
            db_uri: db.authenticator_uri(),
            jwt_secret: random_hex(),
            // Removed with the cluster's folder.
            logs: db.dir.clone(),
            server: None,
        };
        let mut log = String::new();
        for _ in 0..5 {
            postgrest.port = free_port();
            match postgrest.spawn() {
                Ok(()) => return postgrest,
                Err(exited) => log = exited,
            }
        }
        panic!("postgrest exited on every try; its last log:\n{log}");
    }

    /// `http://127.0.0.1:PORT`, the root of the REST API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A JWT that this PostgREST accepts, for the given database role.
    pub fn token(&self, role: &str) -> String {
        hs256_jwt(
            self.jwt_secret.as_bytes(),
            &serde_json::json!({ "role": role }),
        )
    }

    /// The stored rows of the given sessions, by id, as PostgREST returns them; `Err` when
    /// PostgREST does not answer (within 10 s) or refuses.
    pub async fn rows(&self, ids: &[String]) -> Result<HashMap<String, serde_json::Value>, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())?;
        let mut found = HashMap::new();
        for chunk in ids.chunks(200) {
            let response = http
                .get(format!("{}/sessions", self.url()))
                .query(&[("id", format!("in.({})", chunk.join(",")))])
                .bearer_auth(self.token("service_role"))
                .send()
                .await
                .map_err(|e| format!("postgrest: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("postgrest answered {}", response.status()));
            }
            let list: Vec<serde_json::Value> = response.json().await.map_err(|e| e.to_string())?;
            for row in list {
                let id = row["id"].as_str().ok_or("a row without an id")?.to_string();
                found.insert(id, row);
            }
        }
        Ok(found)
    }

    /// `SIGKILL`s PostgREST and waits until its port refuses connections.
    pub fn stop(&mut self) {
        drop(self.server.take().expect("postgrest is running"));
        wait_until(Duration::from_secs(10), "postgrest to stop", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    /// Starts PostgREST again on the port it had.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "postgrest is running");
        if let Err(log) = self.spawn() {
            panic!("postgrest exited instead of starting again on its port; its log:\n{log}");
        }
    }

    /// Starts PostgREST and waits until it serves our table with our secret, or returns its
    /// log when it exited first (as it does when its port is taken).
    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("sh");
        command
            .env("PGRST_DB_URI", &self.db_uri)
            .env("PGRST_DB_SCHEMAS", "public")
            .env("PGRST_DB_ANON_ROLE", "anon")
            // Several instances share the cluster's 100 connections.
            .env("PGRST_DB_POOL", "4")
            .env("PGRST_JWT_SECRET", &self.jwt_secret)
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", self.port.to_string());
        let script = r#"trap '' PIPE
            "$1" >>"$2" 2>&1 & echo $!; read _; kill -9 $! 2>/dev/null; wait"#;
        let log = self.logs.join(format!("postgrest-{}.log", self.port));
        let server = Watchdog::spawn(command, script, &[POSTGREST, &log.to_string_lossy()]);
        let probe = format!(
            "GET /sessions?limit=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            self.token("service_role")
        );
        // Only our PostgREST knows our secret, and it answers 503 until its schema cache is
        // loaded, so a 200 means ours is up and sees the table.
        await_startup(&server, "postgrest", &log, || {
            http_status(self.port, &probe) == Some(200)
        })?;
        self.server = Some(server);
        Ok(())
    }
}

impl Postgrest {
    /// Freezes PostgREST (`SIGSTOP`): connections are still accepted by the kernel, but
    /// nothing answers, as with a hung upstream. [`Postgrest::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen PostgREST (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.server.as_ref().expect("postgrest is running").pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// A Prometheus server scraping one target every second and evaluating the given rules,
/// the end-to-end check of the exposition and of the alerting rules.
pub struct Prometheus {
    port: u16,
    dir: PathBuf,
    _server: Watchdog,
}

impl Prometheus {
    pub fn start(target: std::net::SocketAddr, rules: &Path) -> Prometheus {
        let dir = temp_path("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus folder");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: sessiongate\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let mut log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let script = r#"prometheus --config.file="$1/prometheus.yml" --storage.tsdb.path="$1/data" \
                --web.listen-address="127.0.0.1:$2" >"$1/prometheus.log" 2>&1 & echo $!; read _; kill $! 2>/dev/null; wait"#;
            let server = Watchdog::spawn(
                Command::new("sh"),
                script,
                &[&dir.to_string_lossy(), &port.to_string()],
            );
            let probe = "GET /-/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            match await_startup(&server, "prometheus", &dir.join("prometheus.log"), || {
                http_status(port, probe) == Some(200)
            }) {
                Ok(()) => {
                    return Prometheus {
                        port,
                        dir,
                        _server: server,
                    }
                }
                Err(exited) => log = exited,
            }
        }
        panic!("prometheus exited on every try; its last log:\n{log}");
    }

    /// `http://127.0.0.1:PORT`, the root of Prometheus's HTTP API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster on loopback: three masters and three replicas (`redis-cli --cluster
/// create`), each node under its own watchdog.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
    _nodes: Vec<Watchdog>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = temp_path("cluster");
        std::fs::create_dir_all(&dir).expect("cluster folder");
        // A node's cluster bus listens on its port + 10000, which must be a port too.
        let bus_is_free = |port: u16| TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        let ports: Vec<u16> = (0..6)
            .map(|_| {
                std::iter::repeat_with(free_port)
                    .find(|p| *p <= 55_535 && bus_is_free(*p))
                    .unwrap_or(7000)
            })
            .collect();
        // Each node keeps its own RDB file: a replica writes the snapshot of its full sync
        // there and loads it back, and with one shared file, replicas syncing at once could
        // load each other's shards.
        let script = r#"redis-server --bind 127.0.0.1 --port "$1" --dir "$2" --dbfilename "dump-$1.rdb" \
            --save "" --appendonly no --cluster-enabled yes --cluster-config-file "nodes-$1.conf" \
            --cluster-node-timeout 5000 --logfile "$2/redis-$1.log" & echo $!; read _; kill -9 $! 2>/dev/null; wait"#;
        let nodes: Vec<Watchdog> = ports
            .iter()
            .map(|port| {
                Watchdog::spawn(
                    Command::new("sh"),
                    script,
                    &[&port.to_string(), &dir.to_string_lossy()],
                )
            })
            .collect();
        for port in &ports {
            wait_until(STARTUP_LIMIT, "a cluster node to listen", || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        run(Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"]));
        let cluster = RedisCluster {
            ports,
            dir,
            _nodes: nodes,
        };
        for port in &cluster.ports {
            wait_until(STARTUP_LIMIT, "the cluster to agree on its slots", || {
                cluster
                    .cli(*port, &["cluster", "info"])
                    .contains("cluster_state:ok")
            });
        }
        cluster
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Each node's view of `key` now: the first two lines of its `ROLE`, the hash it holds
    /// under `key` (or the redirection it answers) and how many keys it holds. Taken the
    /// moment a test sees a key's answer go wrong, it says which node could have given it.
    pub fn holders_of(&self, key: &str) -> String {
        self.ports
            .iter()
            .map(|port| {
                let role = self.cli(*port, &["role"]);
                let role: Vec<&str> = role.lines().take(2).map(str::trim).collect();
                format!(
                    "node {port}: role {}, {key}: {}, dbsize {}\n",
                    role.join(" "),
                    self.cli(*port, &["hgetall", key]).trim().replace('\n', " "),
                    self.cli(*port, &["dbsize"]).trim()
                )
            })
            .collect()
    }

    /// What each node logged about roles, replication and failovers: the evidence to print
    /// when a test sees the cluster misbehave.
    pub fn role_changes(&self) -> String {
        const TOPICS: [&str; 6] = ["fail", "master", "replica", "sync", "lost", "epoch"];
        self.ports
            .iter()
            .map(|port| {
                let log = std::fs::read_to_string(self.dir.join(format!("redis-{port}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|line| TOPICS.iter().any(|t| line.to_lowercase().contains(t)))
                    .collect();
                format!("node {port}:\n{}\n", lines.join("\n"))
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self._nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Sentinel watching one master under the name `sessiongate`.
pub struct Sentinel {
    pub port: u16,
    dir: PathBuf,
    _server: Watchdog,
}

impl Sentinel {
    pub fn start(master_port: u16) -> Sentinel {
        let dir = temp_path("sentinel");
        std::fs::create_dir_all(&dir).expect("sentinel folder");
        let port = free_port();
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor sessiongate 127.0.0.1 {master_port} 1\n",
            dir.display()
        );
        std::fs::write(dir.join("sentinel.conf"), config).expect("sentinel config");
        let script = r#"redis-server "$1/sentinel.conf" --sentinel --logfile "$1/sentinel.log" & echo $!; read _; kill -9 $! 2>/dev/null; wait"#;
        let server = Watchdog::spawn(Command::new("sh"), script, &[&dir.to_string_lossy()]);
        wait_until(STARTUP_LIMIT, "sentinel to know its master", || {
            let output = Command::new("redis-cli")
                .args([
                    "-p",
                    &port.to_string(),
                    "sentinel",
                    "get-master-addr-by-name",
                    "sessiongate",
                ])
                .output();
            output.is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&master_port.to_string())
            })
        });
        Sentinel {
            port,
            dir,
            _server: server,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster shared by the cluster tests that leave its topology alone.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The PostgREST shared by the tests that do not stop it.
pub fn shared_postgrest() -> &'static Postgrest {
    static POSTGREST: OnceLock<Postgrest> = OnceLock::new();
    POSTGREST.get_or_init(|| Postgrest::start(shared_postgres()))
}

/// The status code of a raw HTTP/1.1 request to the port, if one comes back.
fn http_status(port: u16, request: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 ")?)
        .ok()?
        .parse()
        .ok()
}

/// Polls until `ready` holds, or returns the server's log when the server exits; panics
/// with the log past the deadline.
fn await_startup(
    server: &Watchdog,
    what: &str,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if ready() {
            return Ok(());
        }
        if !server.server_alive() {
            return Err(read_log());
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} to start; its log:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls a condition until it holds or the deadline passes.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command to completion, panicking with its output when it fails.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port that was free a moment ago (a caller must check it got it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// 64 random hex digits, for the JWT secret and the authenticator's password.
fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A compact JWS signed with HMAC-SHA256, as PostgREST verifies it.
fn hs256_jwt(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&header, claims, &key).expect("an HS256 token")
}
