//! A real one-node Slurm for tests: Debian's slurm-wlm and munge, started as root in a temporary
//! directory (its own munge key and socket, slurm.conf, gres.conf, spool, ports), with eight fake
//! GPUs (`File=` entries on character devices made with `mknod c 1 3`, /dev/null twins: a
//! `Count=`-only GRES is refused at registration). Stopped when dropped.
//!
//! Only one Slurm may run on a machine at a time here (tests of different binaries or different
//! checkouts could start two), so [`SlurmCluster::start`] takes an exclusive lock on
//! `/tmp/pivot-slurm-test.lock` and holds it until the cluster is dropped.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node's name in the test cluster.
pub const NODE: &str = "pivot-gpu1";
/// The partition AI jobs go to.
pub const PARTITION: &str = "ai";
/// Fake GPUs on the node.
pub const GPUS: u32 = 8;

const LOCK_PATH: &str = "/tmp/pivot-slurm-test.lock";

/// Programs the cluster needs, with the Debian package that has each.
const NEEDED: [(&str, &str); 7] = [
    ("/usr/sbin/munged", "munge"),
    ("/usr/sbin/slurmctld", "slurmctld"),
    ("/usr/sbin/slurmd", "slurmd"),
    ("/usr/bin/scontrol", "slurm-client"),
    ("/usr/bin/squeue", "slurm-client"),
    ("/usr/bin/sbatch", "slurm-client"),
    ("/usr/sbin/runuser", "util-linux"),
];

pub struct SlurmCluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    slurmctld: Child,
    slurmd: Child,
    munged_pid_file: PathBuf,
    _lock: File,
}

impl std::fmt::Debug for SlurmCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmCluster")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Two free ports, distinct: both listeners are held until both ports are known (a port freed
/// by the first could otherwise be handed out again for the second).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("no free port: {e}"));
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"))
    };
    (port(&a), port(&b))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown_munge(path: &Path) {
    run(Command::new("chown").arg("munge:munge").arg(path));
}

impl SlurmCluster {
    /// Starts munged, slurmctld and slurmd, and waits until the node is IDLE. Fails (never
    /// skips) when Slurm is not installed or the tests do not run as root.
    pub async fn start() -> Self {
        let missing: Vec<String> = NEEDED
            .iter()
            .filter(|(p, _)| !Path::new(p).exists())
            .map(|(p, pkg)| format!("{p} (Debian package {pkg})"))
            .collect();
        assert!(
            missing.is_empty(),
            "Slurm tests need {}: scripts/test installs them",
            missing.join(", ")
        );
        assert!(
            rustix::process::geteuid().is_root(),
            "Slurm tests start slurmctld, slurmd and munged as root; run them as root (CI does)"
        );
        let lock = File::create(LOCK_PATH).unwrap_or_else(|e| panic!("{LOCK_PATH}: {e}"));
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking {LOCK_PATH}: {e}"));

        let dir = tempfile::Builder::new()
            .prefix("pivot-slurm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let root = dir.path();
        // munged (as user munge) must reach its socket through this directory.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["munge", "munge-key", "dev", "spool/ctld", "spool/d", "log"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }

        // munge: its own key and socket, so the machine's munge (if any) is left alone.
        let key = root.join("munge-key/munge.key");
        let mut bytes = vec![0u8; 1024];
        std::io::Read::read_exact(&mut File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
        fs::write(&key, &bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(root.join("munge-key"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(root.join("munge"), fs::Permissions::from_mode(0o755)).unwrap();
        for p in [root.join("munge-key"), key.clone(), root.join("munge")] {
            chown_munge(&p);
        }
        let socket = root.join("munge/munge.sock");
        let munged_pid_file = root.join("munge/munged.pid");
        run(Command::new("runuser")
            .args(["-u", "munge", "--", "/usr/sbin/munged"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!(
                "--log-file={}",
                root.join("munge/munged.log").display()
            ))
            .arg(format!("--pid-file={}", munged_pid_file.display()))
            .arg(format!(
                "--seed-file={}",
                root.join("munge/munged.seed").display()
            )));

        for i in 0..GPUS {
            run(Command::new("mknod")
                .arg(root.join(format!("dev/nvidia{i}")))
                .args(["c", "1", "3"]));
        }
        let conf = root.join("slurm.conf");
        let r = root.display();
        let (ctld, slurmd) = free_ports();
        fs::write(
            &conf,
            format!(
                "ClusterName=pivottest\n\
                 SlurmctldHost=localhost(127.0.0.1)\n\
                 SlurmctldPort={ctld}\n\
                 SlurmdPort={slurmd}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={sock}\n\
                 StateSaveLocation={r}/spool/ctld\n\
                 SlurmdSpoolDir={r}/spool/d\n\
                 SlurmctldPidFile={r}/slurmctld.pid\n\
                 SlurmdPidFile={r}/slurmd.pid\n\
                 SlurmctldLogFile={r}/log/slurmctld.log\n\
                 SlurmdLogFile={r}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 GresTypes=gpu\n\
                 ReturnToService=2\n\
                 MpiDefault=none\n\
                 NodeName={NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:{GPUS} State=UNKNOWN\n\
                 PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n",
                sock = socket.display(),
            ),
        )
        .unwrap();
        fs::write(
            root.join("gres.conf"),
            format!(
                "NodeName={NODE} Name=gpu File={r}/dev/nvidia[0-{}]\n",
                GPUS - 1
            ),
        )
        .unwrap();

        let daemon = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .env("SLURM_CONF", &conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {program}: {e}"))
        };
        // -D: stay in the foreground, so the harness owns the processes; -i: ignore old state.
        let slurmctld = daemon("/usr/sbin/slurmctld", &["-D", "-i"]);
        let slurmd = daemon("/usr/sbin/slurmd", &["-D", "-N", NODE]);
        let cluster = Self {
            dir,
            conf,
            slurmctld,
            slurmd,
            munged_pid_file,
            _lock: lock,
        };
        cluster
            .wait_until("the node to come up IDLE", Duration::from_secs(60), || {
                cluster.node_state() == "idle"
            })
            .await;
        cluster
    }

    /// The `SLURM_CONF` every command must see.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A Slurm client command with this cluster's configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `sinfo`'s long state word for the node, e.g. `idle`, `drained`, `draining`, `mixed`.
    pub fn node_state(&self) -> String {
        let out = self
            .command("sinfo")
            .args(["-h", "-n", NODE, "-o", "%T"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The node's reason, as `sinfo` shows it.
    pub fn node_reason(&self) -> String {
        run(self.command("sinfo").args(["-h", "-n", NODE, "-o", "%E"]))
            .trim()
            .to_owned()
    }

    /// Submits a batch job that sleeps, with extra `sbatch` arguments; returns its id.
    pub fn submit(&self, args: &[&str]) -> u64 {
        let out = run(self
            .command("sbatch")
            .arg("--parsable")
            .arg(format!("--partition={PARTITION}"))
            .arg(format!("--chdir={}", self.dir.path().display()))
            .arg(format!("--output={}/job-%j.out", self.dir.path().display()))
            .args(args)
            .args(["--wrap", "sleep 600"]));
        out.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("sbatch printed `{out}`, not a job id"))
    }

    /// A job's state and reason, e.g. (`PENDING`, `ReqNodeNotAvail, UnavailableNodes:…`).
    pub fn job(&self, id: u64) -> (String, String) {
        let out = run(self.command("squeue").args([
            "-h",
            "-t",
            "all",
            "-j",
            &id.to_string(),
            "-o",
            "%T|%r",
        ]));
        let line = out.trim();
        let (state, reason) = line.split_once('|').unwrap_or((line, ""));
        (state.to_owned(), reason.to_owned())
    }

    pub fn cancel_all(&self) {
        run(self.command("scancel").args(["-u", "root"]));
    }

    /// Polls `ready` every 20 ms until it holds, or fails naming `what` and the node's log tail.
    pub async fn wait_until(&self, what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = |name: &str| {
            let text =
                fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        panic!(
            "waited {within:?} for {what}; node is `{}`\nslurmctld.log:\n{}\nslurmd.log:\n{}",
            self.node_state(),
            log("slurmctld.log"),
            log("slurmd.log")
        );
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        for child in [&mut self.slurmd, &mut self.slurmctld] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // munged forked itself off: stop it by the pid it wrote.
        if let Some(pid) = fs::read_to_string(&self.munged_pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}
