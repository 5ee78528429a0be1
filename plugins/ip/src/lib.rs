//! `ip`: a virtual IPv4 address on an interface (like Pacemaker's IPaddr2 or LifeKeeper's IP
//! recovery kit).
//!
//! * **start** adds `address` (CIDR) to `interface` with `ip addr add` (already present → success),
//!   then announces it with gratuitous ARP (`arping -U`) when arping is installed.
//! * **monitor**: the address on the interface and the link up (`UP` and `LOWER_UP`) → running;
//!   the address absent → stopped; the address present but the link down or without carrier →
//!   failed.
//! * **stop** removes exactly this address (`ip addr del`); other addresses on the interface stay.
//!
//! With `netns` set, every command runs in that network namespace (`ip -n NS …`,
//! `ip netns exec NS arping …`), which is how the tests run it, and useful for containers.
use std::net::Ipv4Addr;
use std::time::Duration;

use warden_sdk::*;

struct Ip;

/// Where arping lives (iputils-arping installs `/usr/bin/arping`; other packages `/usr/sbin`).
const ARPING: [&str; 2] = ["/usr/bin/arping", "/usr/sbin/arping"];
const IP_PROGRAMS: [&str; 2] = ["/usr/sbin/ip", "/sbin/ip"];
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

struct Config {
    ip: String,
    netns: Option<String>,
    addr: Ipv4Addr,
    prefix: u8,
    /// `addr/prefix` as given to `ip`.
    cidr: String,
    interface: String,
    arping: bool,
    arping_count: u64,
}

/// A name passed to `ip` as one argument: no option look-alikes, no separators.
fn check_name(what: &str, v: &str, max: usize) -> Result<(), AgentError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && !v.starts_with('-')
        && v != "."
        && v != ".."
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidConfig(format!(
            "parameter `{what}` = `{v}` is not a valid name (1-{max} characters: letters, digits, `-`, `_`, `.`, `@`; not starting with `-`)"
        )))
    }
}

impl Config {
    fn from(ctx: &Context) -> Result<Self, AgentError> {
        let address = ctx.require("address")?.trim();
        let bad = || {
            AgentError::InvalidConfig(format!(
                "parameter `address` must be an IPv4 address with its prefix length, like 10.9.0.100/24; got `{address}`"
            ))
        };
        let (a, p) = address.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 || addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            return Err(bad());
        }
        let interface = ctx.require("interface")?.trim().to_string();
        check_name("interface", &interface, 15)?;
        let ip = ctx.param("ip_command").filter(|s| !s.is_empty()).unwrap_or(IP_PROGRAMS[0]).to_string();
        if !IP_PROGRAMS.contains(&ip.as_str()) {
            return Err(AgentError::InvalidConfig(format!("parameter `ip_command` must be one of {}; got `{ip}`", IP_PROGRAMS.join(", "))));
        }
        let netns = match ctx.param("netns").map(str::trim) {
            None | Some("") => None,
            Some(ns) => {
                check_name("netns", ns, 64)?;
                Some(ns.to_string())
            }
        };
        let arping_count = ctx.param_u64("arping_count", 2)?;
        if !(1..=10).contains(&arping_count) {
            return Err(AgentError::InvalidConfig(format!("parameter `arping_count` must be between 1 and 10, got {arping_count}")));
        }
        Ok(Self {
            ip,
            netns,
            addr,
            prefix,
            cidr: format!("{addr}/{prefix}"),
            interface,
            arping: ctx.param_bool("arping", true)?,
            arping_count,
        })
    }

    /// `ip [-n NS] ARGS…`
    fn ip(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.ip).timeout(CMD_TIMEOUT);
        if let Some(ns) = &self.netns {
            c = c.args(["-n", ns.as_str()]);
        }
        c.args(args.iter().copied())
    }

    fn where_(&self) -> String {
        match &self.netns {
            Some(ns) => format!("{} (netns {ns})", self.interface),
            None => self.interface.clone(),
        }
    }
}

/// What `ip -o addr/link show` says about our address and the interface.
#[derive(Debug, PartialEq, Eq)]
enum State {
    NoInterface,
    /// Whether our address is present, and the link's state.
    Present {
        address: bool,
        link: Link,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Link {
    Up,
    /// Administratively down, or up without carrier; the text says which.
    Down(String),
}

fn no_such_device(out: &ExecOutput) -> bool {
    let t = out.output_text();
    t.contains("does not exist") || t.contains("Cannot find device")
}

/// True when `ip -o addr show` output lists exactly `addr/prefix` (any scope or label).
fn has_address(output: &str, addr: Ipv4Addr, prefix: u8) -> bool {
    output.lines().any(|line| {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" {
                if let Some((a, p)) = words.next().and_then(|c| c.split_once('/')) {
                    if a.parse::<Ipv4Addr>().ok() == Some(addr) && p.parse::<u8>().ok() == Some(prefix) {
                        return true;
                    }
                }
            }
        }
        false
    })
}

/// The link state from `ip -o link show dev IF`: `<BROADCAST,MULTICAST,UP,LOWER_UP>`.
fn link_state(output: &str) -> Link {
    let flags: Vec<&str> =
        output.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(f, _)| f.split(',').collect()).unwrap_or_default();
    let state = output.split_whitespace().skip_while(|w| *w != "state").nth(1).unwrap_or("?");
    if !flags.contains(&"UP") {
        Link::Down(format!("link is administratively down (flags <{}>, state {state})", flags.join(",")))
    } else if !flags.contains(&"LOWER_UP") {
        Link::Down(format!("link has no carrier (flags <{}>, state {state})", flags.join(",")))
    } else {
        Link::Up
    }
}

fn state(cfg: &Config) -> Result<State, AgentError> {
    let link = cfg.ip(&["-o", "link", "show", "dev", &cfg.interface]);
    let out = link.run()?;
    if !out.success() {
        if no_such_device(&out) {
            return Ok(State::NoInterface);
        }
        return Err(fail!("`{}` failed ({}): {}", link.display(), out.status_text(), out.output_text()));
    }
    let link = link_state(&out.stdout);
    let addr = cfg.ip(&["-o", "addr", "show", "dev", &cfg.interface]);
    let out = addr.run()?;
    if !out.success() {
        if no_such_device(&out) {
            return Ok(State::NoInterface);
        }
        return Err(fail!("`{}` failed ({}): {}", addr.display(), out.status_text(), out.output_text()));
    }
    Ok(State::Present { address: has_address(&out.stdout, cfg.addr, cfg.prefix), link })
}

fn wait_for(cfg: &Config, want_present: bool) -> Result<bool, AgentError> {
    for _ in 0..20 {
        let present = matches!(state(cfg)?, State::Present { address: true, .. });
        if present == want_present {
            return Ok(true);
        }
        sleep(Duration::from_millis(100));
    }
    Ok(false)
}

/// Gratuitous ARP so that neighbours and switches learn the new owner at once. Best effort: a
/// missing arping or a failed announcement is logged, not an error (the address is up).
fn announce(cfg: &Config) -> Result<(), AgentError> {
    let mut program = None;
    for p in ARPING {
        if fs::exists(p)? {
            program = Some(p);
            break;
        }
    }
    let Some(arping) = program else {
        log::warn(format!("arping is not installed ({}); {} is up without a gratuitous ARP", ARPING.join(" or "), cfg.cidr));
        return Ok(());
    };
    let count = cfg.arping_count.to_string();
    let addr = cfg.addr.to_string();
    let arping_args = ["-U", "-c", count.as_str(), "-I", cfg.interface.as_str(), addr.as_str()];
    let cmd = match &cfg.netns {
        Some(ns) => Command::new(&cfg.ip).args(["netns", "exec", ns.as_str(), arping]).args(arping_args),
        None => Command::new(arping).args(arping_args),
    }
    .timeout(Duration::from_secs(cfg.arping_count + 5));
    let out = cmd.run()?;
    if out.success() {
        log::debug(format!("gratuitous ARP sent for {} on {}", cfg.addr, cfg.where_()));
    } else {
        log::warn(format!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
    }
    Ok(())
}

impl Agent for Ip {
    fn metadata() -> AgentMetadata {
        let mut m = AgentMetadata::new("ip", "0.1.0", "A virtual IPv4 address on a network interface, announced with gratuitous ARP")
            .param(Param::required("address", "The address with its prefix length (CIDR), e.g. 10.9.0.100/24"))
            .param(Param::required("interface", "The interface that carries the address, e.g. eth0"))
            .param(Param::optional("arping", "true", "Announce the address with gratuitous ARP (`arping -U`) after start; a missing arping is only logged"))
            .param(Param::optional("arping_count", "2", "How many gratuitous ARP packets to send (1-10, one per second)"))
            .param(Param::optional("ip_command", IP_PROGRAMS[0], "The ip program: /usr/sbin/ip or /sbin/ip"))
            .param(Param::optional_unset(
                "netns",
                "Run every command in this network namespace (`ip -n NETNS`, `ip netns exec NETNS arping`); unset: the engine's own namespace",
            ));
        m.timeouts.start_ms = 30_000;
        m.timeouts.stop_ms = 20_000;
        m.timeouts.monitor_ms = 10_000;
        m.timeouts.recover_ms = 50_000;
        m.monitor_interval_ms = 5_000;
        m
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        match state(&cfg)? {
            State::NoInterface => Err(AgentError::NotInstalled(format!("interface {} does not exist on this node", cfg.where_()))),
            State::Present { .. } => Ok(()),
        }
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        let link = match state(&cfg)? {
            State::NoInterface => return Err(fail!("interface {} does not exist", cfg.where_())),
            State::Present { address: true, link: Link::Up } => {
                log::info(format!("{} is already on {}", cfg.cidr, cfg.where_()));
                return Ok(());
            }
            State::Present { link, .. } => link,
        };
        if let Link::Down(why) = link {
            return Err(fail!("cannot bring up {} on {}: {why}", cfg.cidr, cfg.where_()));
        }
        let add = cfg.ip(&["addr", "add", &cfg.cidr, "dev", &cfg.interface]);
        let out = add.run()?;
        // "Address already assigned": someone (or an earlier start) added it meanwhile; fine.
        if !out.success() && !out.output_text().contains("already assigned") {
            return Err(fail!("`{}` failed ({}): {}", add.display(), out.status_text(), out.output_text()));
        }
        if !wait_for(&cfg, true)? {
            return Err(fail!("{} does not show up on {} after `{}`", cfg.cidr, cfg.where_(), add.display()));
        }
        log::info(format!("added {} to {}", cfg.cidr, cfg.where_()));
        if cfg.arping {
            announce(&cfg)?;
        }
        Ok(())
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        match state(&cfg)? {
            State::NoInterface | State::Present { address: false, .. } => return Ok(()),
            State::Present { address: true, .. } => {}
        }
        let del = cfg.ip(&["addr", "del", &cfg.cidr, "dev", &cfg.interface]);
        let out = del.run()?;
        if !out.success() && !out.output_text().contains("not found") {
            return Err(fail!("`{}` failed ({}): {}", del.display(), out.status_text(), out.output_text()));
        }
        if !wait_for(&cfg, false)? {
            return Err(fail!("{} is still on {} after `{}`", cfg.cidr, cfg.where_(), del.display()));
        }
        log::info(format!("removed {} from {}", cfg.cidr, cfg.where_()));
        Ok(())
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        let cfg = Config::from(ctx)?;
        Ok(match state(&cfg)? {
            State::NoInterface | State::Present { address: false, .. } => Health::Stopped,
            State::Present { address: true, link: Link::Up } => Health::Running,
            State::Present { address: true, link: Link::Down(why) } => {
                Health::Failed(format!("{} is on {}, but the {why}", cfg.cidr, cfg.where_()))
            }
        })
    }
}

export_agent!(Ip);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_the_exact_address_and_prefix() {
        let out = "2: wa0    inet 10.1.0.5/24 scope global wa0\\       valid_lft forever preferred_lft forever\n\
                   2: wa0    inet 10.1.0.50/24 scope global secondary wa0\\       valid_lft forever\n\
                   2: wa0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
        assert!(has_address(out, "10.1.0.5".parse().unwrap(), 24));
        assert!(has_address(out, "10.1.0.50".parse().unwrap(), 24));
        assert!(!has_address(out, "10.1.0.5".parse().unwrap(), 16));
        assert!(!has_address(out, "10.1.0.6".parse().unwrap(), 24));
        assert!(!has_address("", "10.1.0.5".parse().unwrap(), 24));
    }

    #[test]
    fn reads_link_flags() {
        let up = "2: wa0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT";
        let no_carrier = "2: wa0@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN";
        let down = "2: wa0@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue state DOWN mode DEFAULT";
        assert_eq!(link_state(up), Link::Up);
        assert!(matches!(link_state(no_carrier), Link::Down(w) if w.contains("no carrier")));
        assert!(matches!(link_state(down), Link::Down(w) if w.contains("administratively down")));
        assert!(matches!(link_state("garbage"), Link::Down(_)));
    }
}
