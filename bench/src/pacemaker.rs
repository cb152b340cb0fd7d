//! Pacemaker 2.1 + corosync 3 on the failover segment (issue 9 §7): three
//! nodes, an `ocf:heartbeat:IPaddr2` resource for the service address.
//!
//! Each node is one `ip netns exec <node> sh -c SCRIPT`: `ip netns exec`
//! gives the shell a private mount namespace (mounts are slaves of the
//! host's, so nothing propagates back), where the script mounts fresh
//! tmpfs on every directory the stack keeps state in (`/run` for
//! `/run/crm` and the resource agents' `/run/resource-agents`, `/dev/shm`
//! for libqb's IPC ring buffers, `/var/lib/pacemaker` for the CIB,
//! `/var/lib/corosync`, `/var/log/pacemaker`), bind-mounts the node's own
//! corosync.conf on `/etc/corosync/corosync.conf`, starts corosync in the
//! background and execs `pacemakerd`. libqb's IPC sockets are abstract,
//! hence per network namespace; its shared memory is in the private
//! `/dev/shm`. Everything disappears with the node's processes (the mount
//! namespace dies with its last process); a revived node starts with an
//! empty CIB and gets the cluster's from the DC. Command-line tools
//! (`cibadmin`, `crm_mon`) run with `nsenter -t <pacemakerd> -m -n`.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use heartbeat_tests::{ChildGuard, failover::NODE_NAMES, failover::Segment};

use crate::{corosync, parse};

/// corosync's token timeout (ms) for the pacemaker cluster;
/// `token_coefficient` 0, so it is the token timeout for three nodes too
/// (corosync would add 650 ms per node beyond two). Tried at idle on the
/// 2-vCPU VM, pacemaker running: 300 ms lost the token every ~9 s and
/// 400 ms every few seconds (knet marked its links down); 500 ms kept one
/// membership for 2 minutes, and through the bench's runs.
pub const TOKEN_MS: u32 = 500;

/// How long the cluster may take to form and place the address (at first
/// start the DC election waits `dc-deadtime`, 20 s by default).
pub const FORM_BOUND: Duration = Duration::from_secs(90);

/// The node's script (see the module documentation); `$1` the node's
/// corosync.conf, `$2` its pacemaker log.
const NODE_SCRIPT: &str = r#"set -e
mount --make-rprivate /
for d in /run /dev/shm /var/lib/pacemaker /var/lib/corosync /var/log/pacemaker; do
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
chmod 1777 /dev/shm
mkdir -p /run/crm /run/resource-agents /run/corosync /var/lib/pacemaker/cib \
  /var/lib/pacemaker/pengine /var/lib/pacemaker/blackbox /var/lib/pacemaker/cores
chown -R hacluster:haclient /run/crm /var/lib/pacemaker /var/log/pacemaker
chmod 750 /var/lib/pacemaker/cib /var/lib/pacemaker/pengine
chmod 770 /var/log/pacemaker
mount --bind "$1" /etc/corosync/corosync.conf
corosync -f -c /etc/corosync/corosync.conf &
i=0
until corosync-cmapctl -g totem.cluster_name >/dev/null 2>&1; do
  i=$((i+1)); [ $i -gt 100 ] && { echo "corosync did not start"; exit 1; }
  sleep 0.1
done
export PCMK_logfile="$2" PCMK_debug=no PCMK_logfacility=none
exec pacemakerd
"#;

/// The cluster options: no fencing (nothing to fence with here; a killed
/// node is down), the default quorum policy (three nodes: two keep quorum).
const CRM_CONFIG: &str = r#"<cluster_property_set id="bench-options">
  <nvpair id="bench-stonith-enabled" name="stonith-enabled" value="false"/>
</cluster_property_set>
"#;

/// The address resource: IPaddr2 with its defaults (the interface found
/// from the node's route to the address; gratuitous ARPs sent in the
/// background: 5, 200 ms apart), monitored every 10 s, sticky (it stays
/// where it runs when a killed node comes back).
fn resource(vip: &str) -> String {
    format!(
        r#"<primitive id="web-ip" class="ocf" provider="heartbeat" type="IPaddr2">
  <instance_attributes id="web-ip-params">
    <nvpair id="web-ip-ip" name="ip" value="{vip}"/>
    <nvpair id="web-ip-cidr" name="cidr_netmask" value="24"/>
  </instance_attributes>
  <meta_attributes id="web-ip-meta">
    <nvpair id="web-ip-stickiness" name="resource-stickiness" value="100"/>
  </meta_attributes>
  <operations>
    <op id="web-ip-monitor" name="monitor" interval="10s" timeout="20s"/>
  </operations>
</primitive>
"#
    )
}

/// The settings, for the table and the JSON.
pub fn settings() -> String {
    format!(
        "corosync 3 knet, 3 nodes, token {TOKEN_MS} ms (token_coefficient 0, consensus 1.2 x token); \
         pacemaker 2.1, stonith-enabled false, ocf:heartbeat:IPaddr2 (/24, defaults: 5 gratuitous ARPs 200 ms apart), \
         monitor 10 s, resource-stickiness 100; service resident on every node (SCHED_FIFO 20)"
    )
}

/// The pacemaker processes of one segment's nodes (the caller owns the
/// segment and kills the processes in its namespaces).
pub struct Pacemaker {
    dir: PathBuf,
    /// Each node's `pacemakerd` (the script execs it).
    pub nodes: Vec<Option<ChildGuard>>,
}

fn file(dir: &Path, i: usize, suffix: &str) -> PathBuf {
    dir.join(format!("{}.{suffix}", NODE_NAMES[i]))
}

impl Pacemaker {
    pub fn new(dir: &Path) -> Self {
        Pacemaker {
            dir: dir.to_owned(),
            nodes: (0..NODE_NAMES.len()).map(|_| None).collect(),
        }
    }

    /// Starts node `i` (corosync, then pacemakerd) on `seg`.
    pub fn start(&mut self, seg: &Segment, i: usize) -> anyhow::Result<()> {
        let nodes: Vec<(u32, &str, String)> = (0..NODE_NAMES.len())
            .map(|j| (j as u32 + 1, NODE_NAMES[j], seg.addr(j)))
            .collect();
        let conf = file(&self.dir, i, "corosync.conf");
        std::fs::write(
            &conf,
            corosync::config(
                TOKEN_MS,
                &nodes,
                false,
                &file(&self.dir, i, "corosync.log"),
                Path::new("/var/lib/corosync"),
            ),
        )?;
        let out = file(&self.dir, i, "out");
        let log = file(&self.dir, i, "pacemaker.log");
        let mut cmd = seg.nodes[i].command("sh");
        cmd.env("TZ", "UTC")
            .process_group(0)
            .args(["-c", NODE_SCRIPT, "node"])
            .arg(&conf)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&out)?,
            )
            .stderr(std::fs::File::options().append(true).open(&out)?);
        let mut g = seg.nodes[i].spawn(&mut cmd).context("starting pacemaker")?;
        // corosync is up within a second or two; pacemakerd then runs on.
        if let Ok(Some(st)) = g.wait_timeout(Duration::from_secs(3)) {
            bail!(
                "pacemaker on {} exited at start ({st}): {}",
                NODE_NAMES[i],
                std::fs::read_to_string(&out).unwrap_or_default().trim()
            );
        }
        self.nodes[i] = Some(g);
        Ok(())
    }

    /// Fault -> (token loss declared, new membership, the address resource
    /// started) on node `i`, from its corosync and pacemaker logs (wall
    /// clock, ms resolution).
    pub fn stages(&self, i: usize, fault: u64) -> [Option<i64>; 3] {
        let now = crate::wall_ns();
        let fault = fault as i64;
        let read = |s: &str| std::fs::read_to_string(file(&self.dir, i, s)).unwrap_or_default();
        let corosync = read("corosync.log");
        let first = |want: &dyn Fn(&parse::CorosyncLine) -> bool| {
            corosync
                .lines()
                .filter_map(|l| parse::corosync_line(l, now))
                .find(|(t, what)| *t >= fault && want(what))
                .map(|(t, _)| t - fault)
        };
        let detected = first(&|w| matches!(w, parse::CorosyncLine::ProcessorFailed(_)));
        let view = first(&|w| matches!(w, parse::CorosyncLine::Members(_)));
        let started = read("pacemaker.log")
            .lines()
            .filter(|l| l.contains("Result of start operation for web-ip"))
            .filter_map(|l| parse::corosync_stamp(l, now))
            .map(|(t, _)| t)
            .find(|t| *t >= fault)
            .map(|t| t - fault);
        [detected, view, started]
    }

    /// A pacemaker tool run in node `i`'s namespaces.
    fn tool(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let pid = self.nodes[i]
            .as_ref()
            .with_context(|| format!("{} is not running", NODE_NAMES[i]))?
            .pid();
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("nsenter {args:?}"))?;
        if !out.status.success() {
            bail!(
                "{args:?} on {}: {}{}",
                NODE_NAMES[i],
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The first running node.
    fn any(&self) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(Option::is_some)
            .context("no pacemaker node is running")
    }

    /// `crm_mon -1` from a running node.
    pub fn status(&self) -> String {
        self.any()
            .and_then(|i| self.tool(i, &["crm_mon", "-1"]))
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Waits (at most `within`) until a DC is elected and every node is
    /// online.
    pub fn wait_online(&self, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        let all = format!("Online: [ {} ]", NODE_NAMES.join(" "));
        loop {
            crate::check_interrupt()?;
            let s = self.status();
            if s.contains(&all) && s.contains("Current DC:") && !s.contains("Current DC: NONE") {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "the pacemaker cluster did not form with every node online within {} s:\n{s}",
                    within.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Loads the options and the address resource into the CIB.
    pub fn configure(&self, seg: &Segment) -> anyhow::Result<()> {
        let i = self.any()?;
        let opts = self.dir.join("crm_config.xml");
        std::fs::write(&opts, CRM_CONFIG)?;
        let rsc = self.dir.join("resource.xml");
        std::fs::write(&rsc, resource(&seg.vip()))?;
        for (section, f) in [("crm_config", &opts), ("resources", &rsc)] {
            let f = f.to_str().context("path")?;
            self.tool(i, &["cibadmin", "-C", "-o", section, "-x", f])?;
        }
        Ok(())
    }
}

impl Drop for Pacemaker {
    fn drop(&mut self) {
        // The segment kills what is left in its namespaces; SIGKILL here so
        // no pacemakerd lingers in a graceful shutdown.
        for g in self.nodes.iter_mut().flatten() {
            let _ = g.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corosync_config_for_three_nodes() {
        let nodes: Vec<(u32, &str, String)> = (0..3)
            .map(|j| (j as u32 + 1, NODE_NAMES[j], format!("10.235.0.{}", j + 1)))
            .collect();
        let c = corosync::config(
            TOKEN_MS,
            &nodes,
            false,
            Path::new("/x/alpha.corosync.log"),
            Path::new("/var/lib/corosync"),
        );
        assert!(c.contains("  token: 500\n  token_coefficient: 0\n}\n"));
        assert!(c.contains("quorum {\n  provider: corosync_votequorum\n}\n"));
        assert!(c.contains("    name: gamma\n    nodeid: 3\n    ring0_addr: 10.235.0.3\n"));
        assert_eq!(c.matches("  node {").count(), 3);
    }

    #[test]
    fn two_node_config() {
        let c = corosync::config(
            1000,
            &[
                (1, "a", "10.200.10.1".into()),
                (2, "b", "10.200.10.2".into()),
            ],
            true,
            Path::new("/d/a.log"),
            Path::new("/d/a.state"),
        );
        assert_eq!(
            c,
            "totem {\n  version: 2\n  cluster_name: hbbench\n  transport: knet\n  \
             crypto_cipher: none\n  crypto_hash: none\n  token: 1000\n  token_coefficient: 0\n}\n\
             logging {\n  fileline: off\n  to_stderr: no\n  to_logfile: yes\n  logfile: /d/a.log\n  \
             to_syslog: no\n  timestamp: hires\n  debug: off\n}\n\
             quorum {\n  provider: corosync_votequorum\n  two_node: 1\n}\n\
             system {\n  state_dir: /d/a.state\n}\n\
             nodelist {\n  node {\n    name: a\n    nodeid: 1\n    ring0_addr: 10.200.10.1\n  }\n  \
             node {\n    name: b\n    nodeid: 2\n    ring0_addr: 10.200.10.2\n  }\n}\n"
        );
    }

    #[test]
    fn resource_names_the_address() {
        let r = resource("10.235.0.100");
        assert!(r.contains(r#"type="IPaddr2""#));
        assert!(r.contains(r#"name="ip" value="10.235.0.100""#));
        assert!(r.contains(r#"name="cidr_netmask" value="24""#));
    }
}
