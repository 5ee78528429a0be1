//! The `ip` agent (virtual IP) through the real host, in network namespaces created by the test:
//! two namespaces joined by a veth pair; the agent manages an address in namespace a (its
//! `netns` parameter), namespace b checks that the address answers.

use crate::{netns, support};
use std::time::Duration;

use netns::{answers_from, run, VethPair};
use support::*;
use warden::plugin::{AgentFailure, CallContext, Health, Limits, Plugin, PluginInstance};

const T: Option<Duration> = Some(Duration::from_secs(60));
const VIP: &str = "10.9.0.100";
const CIDR: &str = "10.9.0.100/24";

/// Exactly what the agent needs for one address on `va` in namespace `ns`, nothing more.
fn grants(ns: &str) -> warden_manifest::Capabilities {
    caps(&format!(
        r#"
exec = [
    {{ program = "/usr/sbin/ip", args = ["-n", "{ns}", "-o", "*", "show", "dev", "va"] }},
    {{ program = "/usr/sbin/ip", args = ["-n", "{ns}", "addr", "*", "{CIDR}", "dev", "va"] }},
    {{ program = "/usr/sbin/ip", args = ["netns", "exec", "{ns}", "/usr/bin/arping", "-U", "-c", "*", "-I", "va", "{VIP}"] }},
]
read = ["/usr/bin/arping", "/usr/sbin/arping"]
"#
    ))
}

async fn setup(tag: &str) -> (VethPair, std::sync::Arc<Plugin>, PluginInstance, CallContext) {
    let pair = VethPair::new(tag);
    run("/usr/sbin/ip", &["-n", &pair.a, "addr", "add", "10.9.0.1/24", "dev", "va"]);
    run("/usr/sbin/ip", &["-n", &pair.b, "addr", "add", "10.9.0.2/24", "dev", "vb"]);
    let host = host();
    let plugin = load(&host, &built_plugin("ip")).await;
    assert_eq!(plugin.name(), "ip");
    let inst = plugin.instance("vip", grants(&pair.a), Limits::default());
    let params = plugin
        .metadata
        .resolve_params(&ctx(&[("address", CIDR), ("interface", "va"), ("netns", &pair.a), ("arping_count", "1")]).params)
        .unwrap();
    (pair, plugin, inst, CallContext { params, ..ctx(&[]) })
}

fn has(addresses: &str, cidr: &str) -> bool {
    addresses.split_whitespace().any(|w| w == cidr)
}

async fn answers(ns: &str, up: bool) -> bool {
    let ns = ns.to_string();
    // Generous: ARP resolution and neighbour state changes take their time on a loaded machine.
    wait_until(Duration::from_secs(20), || answers_from(&ns, VIP.parse().unwrap()) == up).await
}

#[tokio::test]
async fn vip_is_added_answers_from_another_namespace_and_is_removed() {
    let (pair, _plugin, mut inst, c) = setup("wti").await;
    // A neighbour holding a stale, wrong entry for the VIP: the gratuitous ARP must correct it.
    run("/usr/sbin/ip", &["-n", &pair.b, "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:99", "dev", "vb", "nud", "stale"]);
    assert!(
        std::path::Path::new("/usr/bin/arping").exists() || std::path::Path::new("/usr/sbin/arping").exists(),
        "install iputils-arping"
    );

    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    assert!(!answers_from(&pair.b, VIP.parse().unwrap()), "nothing answers before start");

    inst.start(&c, T).await.unwrap();
    assert!(has(&pair.addresses_a(), CIDR), "{}", pair.addresses_a());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    let mac = pair.mac_a();
    let b = pair.b.clone();
    let corrected =
        wait_until(Duration::from_secs(10), || run("/usr/sbin/ip", &["-n", &b, "neigh", "show", VIP, "dev", "vb"]).contains(&mac)).await;
    assert!(
        corrected,
        "gratuitous ARP did not update the neighbour: {}",
        run("/usr/sbin/ip", &["-n", &b, "neigh", "show", VIP, "dev", "vb"])
    );
    assert!(answers(&pair.b, true).await, "{VIP} must answer from the other namespace after start");

    // Idempotent start: still exactly one copy of the address, still running.
    inst.start(&c, T).await.expect("start is idempotent");
    assert_eq!(pair.addresses_a().matches(&format!(" {CIDR} ")).count(), 1, "{}", pair.addresses_a());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);

    // Stop removes only its own address: the base address and another secondary stay.
    run("/usr/sbin/ip", &["-n", &pair.a, "addr", "add", "10.9.0.101/24", "dev", "va"]);
    inst.stop(&c, T).await.unwrap();
    let after = pair.addresses_a();
    assert!(!has(&after, CIDR), "{after}");
    assert!(has(&after, "10.9.0.1/24") && has(&after, "10.9.0.101/24"), "stop removed someone else's address: {after}");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    assert!(answers(&pair.b, false).await, "{VIP} must stop answering after stop");
    inst.stop(&c, T).await.expect("stopping a stopped address succeeds");

    // And it comes back.
    inst.start(&c, T).await.unwrap();
    assert!(answers(&pair.b, true).await);
    inst.stop(&c, T).await.unwrap();
}

#[tokio::test]
async fn link_down_or_without_carrier_is_a_failure() {
    let (pair, _plugin, mut inst, c) = setup("wtl").await;
    inst.start(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);

    // The peer goes away: our link is up but has no carrier.
    run("/usr/sbin/ip", &["-n", &pair.b, "link", "set", "vb", "down"]);
    let h = inst.monitor(&c, T).await.unwrap();
    assert!(matches!(&h, Health::Failed(r) if r.contains("no carrier") && r.contains(CIDR)), "{h:?}");
    run("/usr/sbin/ip", &["-n", &pair.b, "link", "set", "vb", "up"]);
    assert!(
        wait_until(
            Duration::from_secs(10),
            || matches!(run("/usr/sbin/ip", &["-n", &pair.a, "-o", "link", "show", "dev", "va"]), s if s.contains("LOWER_UP"))
        )
        .await
    );
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);

    // Our link set down: the address stays (IPv4 does), the resource is failed, not stopped.
    run("/usr/sbin/ip", &["-n", &pair.a, "link", "set", "va", "down"]);
    assert!(has(&pair.addresses_a(), CIDR));
    let h = inst.monitor(&c, T).await.unwrap();
    assert!(matches!(&h, Health::Failed(r) if r.contains("administratively down")), "{h:?}");
    // start on a down link refuses instead of pretending.
    inst.stop(&c, T).await.unwrap();
    let err = inst.start(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("down")), "{err}");
    assert!(!has(&pair.addresses_a(), CIDR), "a refused start leaves no address behind");
}

#[tokio::test]
async fn bad_config_missing_interface_and_missing_grants_are_reported() {
    let (pair, plugin, mut inst, c) = setup("wtc").await;

    let bad = CallContext {
        params: plugin.metadata.resolve_params(&ctx(&[("address", "10.9.0.100"), ("interface", "va")]).params).unwrap(),
        ..ctx(&[])
    };
    let err = inst.start(&bad, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(m)) if m.contains("prefix")), "{err}");

    let mut params = c.params.clone();
    params.insert("interface".into(), "nosuch0".into());
    let missing = CallContext { params, ..ctx(&[]) };
    // Grant the other interface name too, so that the error is about the interface itself.
    let g = caps(&format!(r#"exec = [{{ program = "/usr/sbin/ip", args = ["-n", "{}", "**"] }}]"#, pair.a));
    let mut other = plugin.instance("vip2", g, Limits::default());
    let err = other.validate(&missing, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::NotInstalled(m)) if m.contains("nosuch0")), "{err}");
    let err = other.start(&missing, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("nosuch0")), "{err}");
    assert_eq!(other.monitor(&missing, T).await.unwrap(), Health::Stopped);

    // Without grants: access denied, nothing changed.
    let mut denied = plugin.instance("vip3", caps(""), Limits::default());
    let err = denied.start(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
    assert!(!has(&pair.addresses_a(), CIDR));
    // The granted instance still works.
    inst.start(&c, T).await.unwrap();
    inst.stop(&c, T).await.unwrap();
}
