//! Parsers for what each system under test reports when it sees its peer
//! fail or come back: keepalived's notify FIFO, FRR bfdd's log, corosync's
//! log and the heartbeat agent's JSON events journal.
//!
//! Every parser takes one line and returns `None` for lines that carry no
//! state change, so a reader can feed it everything a daemon writes. The
//! tests run them on output captured from the real daemons
//! (`samples/`).

use heartbeat_api::journal::{Entry, EventKind};
use std::net::Ipv4Addr;

/// What a line says about the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The observer declared the peer failed (or took over from it).
    Down,
    /// The observer sees the peer alive again.
    Up,
    /// A first sign of trouble that is not yet a declaration (corosync's
    /// token loss, heartbeat's per-link expiry).
    Suspect,
}

/// One observation, in wall-clock nanoseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Obs {
    /// When the observer decided (its own timestamp where it has one).
    pub wall_ns: i64,
    pub transition: Transition,
    /// When the decision was handled in user space, where that differs
    /// (heartbeat: the agent's `handled_wall_ns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handled_ns: Option<i64>,
    /// Short description (state names, reason).
    pub detail: String,
}

// ---------------------------------------------------------------- time ----

const NS: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let d = i64::from(d);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `HH:MM:SS[.frac]` to nanoseconds since midnight.
fn parse_hms(s: &str) -> Option<i64> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let mut it = hms.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let mut ns = 0i64;
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ns = f.parse::<i64>().ok()? * 10i64.pow(9 - f.len() as u32);
    }
    Some(((h * 60 + m) * 60 + sec) * NS + ns)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|m| *m == name).map(|i| i as u32 + 1)
}

/// `YYYY/MM/DD HH:MM:SS.ffffff` (UTC) to ns since the epoch.
fn parse_slash_datetime(date: &str, time: &str) -> Option<i64> {
    let mut it = date.split('/');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 * NS + parse_hms(time)?)
}

/// The year of a wall-clock time in ns (UTC).
pub fn year_of(wall_ns: i64) -> i64 {
    civil_from_days(wall_ns.div_euclid(86_400 * NS)).0
}

// ---------------------------------------------------------- keepalived ----

/// A line of keepalived's `notify_fifo`: `INSTANCE "VI_1" MASTER 100`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpNotify {
    /// `INSTANCE` or `GROUP`.
    pub kind: String,
    pub name: String,
    /// `MASTER`, `BACKUP`, `FAULT`, `STOP`, `MASTER_RX_LOWER_PRI`, ...
    pub state: String,
    pub priority: Option<u32>,
}

/// Parses one notify FIFO line.
pub fn keepalived_notify(line: &str) -> Option<VrrpNotify> {
    let mut it = line.split_whitespace();
    let kind = it.next()?;
    if kind != "INSTANCE" && kind != "GROUP" {
        return None;
    }
    let name = it.next()?.trim_matches('"');
    let state = it.next()?;
    let priority = it.next().and_then(|p| p.parse().ok());
    Some(VrrpNotify {
        kind: kind.to_owned(),
        name: name.to_owned(),
        state: state.to_owned(),
        priority,
    })
}

/// What a VRRP state reported by the backup node means for the master:
/// `MASTER` (it took over) and `FAULT` (its own link is gone) are the
/// failure declarations, `BACKUP` means the master is heard again.
pub fn vrrp_transition(state: &str) -> Option<Transition> {
    match state {
        "MASTER" | "FAULT" => Some(Transition::Down),
        "BACKUP" => Some(Transition::Up),
        _ => None,
    }
}

/// A FIFO line as the bench records it: `<secs>.<nanos> <line>`, stamped
/// with CLOCK_REALTIME when it was read.
pub fn stamped_line(line: &str) -> Option<(i64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let (s, frac) = stamp.split_once('.')?;
    if frac.len() != 9 {
        return None;
    }
    let s: i64 = s.parse().ok()?;
    let f: i64 = frac.parse().ok()?;
    Some((s * NS + f, rest))
}

/// Formats a stamp the way [`stamped_line`] reads it.
pub fn format_stamp(wall_ns: i64) -> String {
    format!("{}.{:09}", wall_ns.div_euclid(NS), wall_ns.rem_euclid(NS))
}

/// A keepalived observation from a stamped FIFO line.
pub fn keepalived_obs(stamped: &str) -> Option<Obs> {
    let (ns, line) = stamped_line(stamped)?;
    let n = keepalived_notify(line)?;
    let transition = vrrp_transition(&n.state)?;
    Some(Obs {
        wall_ns: ns,
        transition,
        handled_ns: None,
        detail: n.state,
    })
}

// --------------------------------------------------------------- bfdd -----

/// A `state-change` line of bfdd's log (with `log timestamp precision 6`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdChange {
    pub wall_ns: i64,
    pub peer: Ipv4Addr,
    pub from: String,
    pub to: String,
    pub reason: Option<String>,
}

/// Parses `2026/11/22 11:01:19.361728 BFD: [..] state-change: [mhop:no
/// peer:10.200.99.1 local:.. vrf:default] up -> down reason:control-expired`.
/// The timestamp is read as UTC (the bench runs bfdd with `TZ=UTC`).
pub fn bfdd_state_change(line: &str) -> Option<BfdChange> {
    let mut words = line.splitn(3, ' ');
    let date = words.next()?;
    let time = words.next()?;
    let rest = words.next()?;
    let wall_ns = parse_slash_datetime(date, time)?;
    let (_, after) = rest.split_once("state-change: [")?;
    let (fields, tail) = after.split_once(']')?;
    let peer = fields
        .split_whitespace()
        .find_map(|f| f.strip_prefix("peer:"))?
        .parse()
        .ok()?;
    let mut it = tail.split_whitespace();
    let from = it.next()?.to_owned();
    if it.next()? != "->" {
        return None;
    }
    let to = it.next()?.to_owned();
    let reason = it
        .find_map(|w| w.strip_prefix("reason:"))
        .map(str::to_owned);
    Some(BfdChange {
        wall_ns,
        peer,
        from,
        to,
        reason,
    })
}

/// A bfdd observation of `peer` from a log line.
pub fn bfdd_obs(line: &str, peer: Ipv4Addr) -> Option<Obs> {
    let c = bfdd_state_change(line)?;
    if c.peer != peer {
        return None;
    }
    let transition = match c.to.as_str() {
        "down" => Transition::Down,
        "up" => Transition::Up,
        _ => return None,
    };
    let mut detail = format!("{} -> {}", c.from, c.to);
    if let Some(r) = c.reason {
        detail.push_str(&format!(" ({r})"));
    }
    Some(Obs {
        wall_ns: c.wall_ns,
        transition,
        handled_ns: None,
        detail,
    })
}

// ----------------------------------------------------------- corosync -----

/// What a corosync log line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorosyncLine {
    /// `[QUORUM] Members[N]: 1 2`: the membership now in force.
    Members(Vec<u32>),
    /// `[TOTEM ] A processor failed, forming new configuration: ...`.
    ProcessorFailed(String),
    /// `[TOTEM ] Token has not been received in N ms`.
    TokenLate(String),
    /// `[KNET  ] link: host: H link: L is down`.
    KnetLinkDown(u32),
    /// `[MAIN  ] Corosync main process was not scheduled ...`.
    NotScheduled(String),
    /// `[TOTEM ] A new membership (R) was formed. Members joined: J left: L`:
    /// the ring `R` agreed (logged by every member as it goes operational).
    NewMembership {
        ring: String,
        joined: Vec<u32>,
        left: Vec<u32>,
    },
}

/// Parses the `Mon DD HH:MM:SS.mmm` stamp of a corosync log line (UTC, no
/// year: the year that puts it closest to `now_ns` is taken).
pub fn corosync_stamp(line: &str, now_ns: i64) -> Option<(i64, &str)> {
    let mut it = line.splitn(4, ' ');
    let mon = month_number(it.next()?)?;
    let mut day_str = it.next()?;
    let mut rest = it.next()?;
    let mut tail = it.next()?;
    // syslog-style days are space padded: "Nov  2 ..." splits into "" first.
    if day_str.is_empty() {
        day_str = rest;
        let mut again = tail.splitn(2, ' ');
        rest = again.next()?;
        tail = again.next()?;
    }
    let day: u32 = day_str.parse().ok()?;
    if !(1..=31).contains(&day) {
        return None;
    }
    let tod = parse_hms(rest)?;
    let year = year_of(now_ns);
    let best = [year - 1, year, year + 1]
        .into_iter()
        .map(|y| days_from_civil(y, mon, day) * 86_400 * NS + tod)
        .min_by_key(|t| (t - now_ns).abs())?;
    Some((best, tail))
}

/// Parses one corosync log line into its wall time and meaning.
pub fn corosync_line(line: &str, now_ns: i64) -> Option<(i64, CorosyncLine)> {
    let (ns, tail) = corosync_stamp(line, now_ns)?;
    if let Some((_, list)) = tail.split_once("[QUORUM] Members[") {
        let (_, ids) = list.split_once("]:")?;
        let members = ids
            .split_whitespace()
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u32>>>()?;
        return Some((ns, CorosyncLine::Members(members)));
    }
    if let Some((_, msg)) = tail.split_once("[TOTEM ] A new membership (") {
        let (ring, rest) = msg.split_once(") was formed. Members")?;
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        let mut into = None;
        for word in rest.split_whitespace() {
            match word {
                "joined:" => into = Some(&mut joined),
                "left:" => into = Some(&mut left),
                id => into.as_mut()?.push(id.parse().ok()?),
            }
        }
        return Some((
            ns,
            CorosyncLine::NewMembership {
                ring: ring.to_owned(),
                joined,
                left,
            },
        ));
    }
    if let Some((_, msg)) = tail.split_once("A processor failed, forming new configuration: ") {
        return Some((ns, CorosyncLine::ProcessorFailed(msg.trim().to_owned())));
    }
    if let Some((_, msg)) = tail.split_once("Token has not been received in ") {
        return Some((ns, CorosyncLine::TokenLate(msg.trim().to_owned())));
    }
    if let Some((_, msg)) = tail.split_once("[KNET  ] link: host: ") {
        if let Some(host) = msg
            .strip_suffix(" is down")
            .and_then(|m| m.split(' ').next())
        {
            return Some((ns, CorosyncLine::KnetLinkDown(host.parse().ok()?)));
        }
        return None;
    }
    if let Some((_, msg)) = tail.split_once("Corosync main process was not scheduled") {
        return Some((ns, CorosyncLine::NotScheduled(msg.trim().to_owned())));
    }
    None
}

/// A corosync observation of node `peer_id` from a log line: the
/// membership losing or regaining it, or a token loss (suspect).
pub fn corosync_obs(line: &str, peer_id: u32, now_ns: i64) -> Option<Obs> {
    let (wall_ns, what) = corosync_line(line, now_ns)?;
    let (transition, detail) = match what {
        CorosyncLine::Members(m) => {
            let list = m.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
            if m.contains(&peer_id) {
                (Transition::Up, format!("members: {list}"))
            } else {
                (Transition::Down, format!("members: {list}"))
            }
        }
        CorosyncLine::ProcessorFailed(msg) => (Transition::Suspect, msg),
        _ => return None,
    };
    Some(Obs {
        wall_ns,
        transition,
        handled_ns: None,
        detail,
    })
}

// ----------------------------------------------------------- heartbeat ----

/// A heartbeat agent journal observation of peer `peer` (node name):
/// `node_down` / `node_up` are declarations, `link_down` is a suspect.
/// The time is the kernel's (`kernel_wall_ns`), the handled time the
/// agent's.
pub fn heartbeat_obs(line: &str, peer: &str) -> Option<Obs> {
    let e: Entry = serde_json::from_str(line).ok()?;
    if e.peer.as_deref() != Some(peer) {
        return None;
    }
    let transition = match e.event {
        EventKind::NodeDown => Transition::Down,
        EventKind::NodeUp => Transition::Up,
        EventKind::LinkDown => Transition::Suspect,
        _ => return None,
    };
    let wall = |ns: u64| (ns != 0).then_some(ns as i64);
    let kernel = wall(e.kernel_wall_ns);
    let handled = wall(e.handled_wall_ns);
    let mut detail = e.event.as_str().to_owned();
    if !e.cause.is_empty() {
        detail.push_str(&format!(" ({})", e.cause));
    }
    Some(Obs {
        wall_ns: kernel.or(handled)?,
        transition,
        handled_ns: handled,
        detail,
    })
}

/// Events of the agent itself worth counting (`agent_stale`), by name.
pub fn heartbeat_event_name(line: &str) -> Option<String> {
    let e: Entry = serde_json::from_str(line).ok()?;
    Some(e.event.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEPALIVED: &str = include_str!("samples/keepalived_notify_fifo_b.txt");
    const BFDD: &str = include_str!("samples/bfdd_b.log");
    const COROSYNC: &str = include_str!("samples/corosync_b.log");
    const HEARTBEAT: &str = include_str!("samples/heartbeat_events_b.jsonl");

    fn ns(s: i64, frac_ns: i64) -> i64 {
        s * NS + frac_ns
    }

    #[test]
    fn calendar_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1000, 0, 59, 60, 11_016, 20_000, 20_779] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(year_of(1_795_345_236_476_236_595), 2026);
    }

    #[test]
    fn keepalived_fifo_sample() {
        let obs: Vec<Obs> = KEEPALIVED.lines().filter_map(keepalived_obs).collect();
        assert_eq!(obs.len(), KEEPALIVED.lines().count());
        assert_eq!(obs[0].transition, Transition::Up);
        assert_eq!(obs[1].transition, Transition::Down);
        assert_eq!(obs[1].detail, "MASTER");
        assert_eq!(obs[1].wall_ns, ns(1_795_345_236, 476_236_595));
        let n = keepalived_notify("INSTANCE \"VI_1\" MASTER_RX_LOWER_PRI 200").unwrap();
        assert_eq!(n.state, "MASTER_RX_LOWER_PRI");
        assert_eq!(n.priority, Some(200));
        assert_eq!(vrrp_transition(&n.state), None);
        assert_eq!(vrrp_transition("FAULT"), Some(Transition::Down));
        assert!(keepalived_notify("garbage").is_none());
        assert!(keepalived_obs("no stamp INSTANCE \"VI_1\" MASTER 1").is_none());
        assert_eq!(
            stamped_line(&format!("{} x", format_stamp(ns(5, 7)))),
            Some((ns(5, 7), "x"))
        );
    }

    #[test]
    fn bfdd_log_sample() {
        let peer: Ipv4Addr = "10.200.99.1".parse().unwrap();
        let obs: Vec<Obs> = BFDD.lines().filter_map(|l| bfdd_obs(l, peer)).collect();
        let kinds: Vec<Transition> = obs.iter().map(|o| o.transition).collect();
        use Transition::*;
        assert_eq!(kinds, [Up, Down, Up, Down, Up]);
        // 2026/11/22 11:01:19.361728 UTC
        let expect = days_from_civil(2026, 11, 22) * 86_400 * NS
            + ((11 * 60 + 1) * 60 + 19) * NS
            + 361_728_000;
        assert_eq!(obs[1].wall_ns, expect);
        assert!(obs[1].detail.contains("control-expired"));
        // Another peer's sessions are ignored.
        let other: Ipv4Addr = "10.200.99.7".parse().unwrap();
        assert_eq!(BFDD.lines().filter_map(|l| bfdd_obs(l, other)).count(), 0);
        assert!(
            bfdd_state_change("2026/13/22 11:01:19.1 BFD: state-change: [peer:1.2.3.4] up -> down")
                .is_none()
        );
    }

    #[test]
    fn corosync_log_sample() {
        let now = days_from_civil(2026, 11, 22) * 86_400 * NS;
        let obs: Vec<Obs> = COROSYNC
            .lines()
            .filter_map(|l| corosync_obs(l, 1, now))
            .collect();
        let downs: Vec<&Obs> = obs
            .iter()
            .filter(|o| o.transition == Transition::Down)
            .collect();
        let suspects: Vec<&Obs> = obs
            .iter()
            .filter(|o| o.transition == Transition::Suspect)
            .collect();
        // The sample: B starts alone (members: 2), A joins, then three
        // token losses (two spontaneous at idle with token 130 ms, one a
        // SIGSTOP), each followed by a membership without A.
        assert_eq!(downs.len(), 4);
        assert_eq!(suspects.len(), 3);
        for (s, d) in suspects.iter().zip(&downs[1..]) {
            assert!(s.detail.contains("token timed out"));
            // consensus = 1.2 x token = 156 ms
            assert_eq!(d.wall_ns - s.wall_ns, 156_000_000);
        }
        // Nov 22 11:02:05.235
        let expect = now + ((11 * 60 + 2) * 60 + 5) * NS + 235_000_000;
        assert_eq!(downs[2].wall_ns, expect);
        assert_eq!(downs[2].detail, "members: 2");
        assert_eq!(obs.last().unwrap().transition, Transition::Down);
        // The year is the one closest to "now", also across new year.
        let jan = days_from_civil(2027, 1, 1) * 86_400 * NS;
        let (t, _) = corosync_line(
            "Dec 31 23:59:59.999 [1] vm corosync notice  [QUORUM] Members[1]: 2",
            jan,
        )
        .unwrap();
        assert_eq!(year_of(t), 2026);
        let (_, what) = corosync_line(
            "Nov  2 01:02:03.004 [1] vm corosync info    [KNET  ] link: host: 1 link: 0 is down",
            now,
        )
        .unwrap();
        assert_eq!(what, CorosyncLine::KnetLinkDown(1));
        assert!(corosync_line("Foo 22 11:02:05.235 x", now).is_none());
        let (_, what) = corosync_line(
            "Nov 22 11:02:03.095 [11774] vm corosync notice  [TOTEM ] A new membership (2.d) was formed. Members left: 1 3",
            now,
        )
        .unwrap();
        assert_eq!(
            what,
            CorosyncLine::NewMembership {
                ring: "2.d".into(),
                joined: vec![],
                left: vec![1, 3]
            }
        );
        let (_, what) = corosync_line(
            "Nov 22 11:02:03.095 [1] vm corosync notice  [TOTEM ] A new membership (1.11) was formed. Members joined: 1 left: 2",
            now,
        )
        .unwrap();
        assert_eq!(
            what,
            CorosyncLine::NewMembership {
                ring: "1.11".into(),
                joined: vec![1],
                left: vec![2]
            }
        );
    }

    #[test]
    fn heartbeat_journal_sample() {
        let obs: Vec<Obs> = HEARTBEAT
            .lines()
            .filter_map(|l| heartbeat_obs(l, "a"))
            .collect();
        assert!(obs.iter().any(|o| o.transition == Transition::Down));
        let down = obs
            .iter()
            .find(|o| o.transition == Transition::Down)
            .unwrap();
        assert!(down.handled_ns.unwrap() >= down.wall_ns);
        assert!(heartbeat_obs("{not json", "a").is_none());
        assert!(
            heartbeat_obs(
                r#"{"event":"node_down","peer":"zz","kernel_wall_ns":1}"#,
                "a"
            )
            .is_none()
        );
    }
}
