//! Cluster tier: real `warden node run` members (two nodes and a witness) in network namespaces,
//! over two paths with mutual TLS, cut with iptables; a sampler checks that no service ever runs
//! on two members at once.

#[path = "../support/cluster.rs"]
mod cluster;
#[path = "../support/jp1.rs"]
mod jp1;
#[path = "../support/memcluster.rs"]
mod memcluster;
#[path = "../support/netns.rs"]
mod netns;
#[path = "../support/node.rs"]
mod node;
#[path = "../support/plugins.rs"]
mod support;

mod demo;
mod example;
mod in_memory;
mod jp1_host;
mod ledger;
mod members;
mod membership;
mod nemesis;
