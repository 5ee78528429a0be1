//! `warden cluster init` and `warden cluster add-node`: the cluster's certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use warden_cluster::pki;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Make the cluster's CA and a certificate and key for every node (keys mode 0600). Copy
    /// ca.pem, NODE.pem and NODE.key to each node; keep ca.key off the nodes (it is needed only
    /// to add nodes). Never overwrites an existing file.
    Init {
        /// Where to write ca.pem, ca.key, NODE.pem and NODE.key (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name (peers of another cluster are refused).
        #[arg(long)]
        name: String,
        /// The node names, as in the config's nodes (witness included).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make a certificate and key for a node added later (before `warden node add`), signed by
    /// the CA in DIR (ca.pem and ca.key from `cluster init`). Never overwrites a file.
    AddNode {
        /// Where ca.pem and ca.key are; NODE.pem and NODE.key are written there.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, as given to `cluster init`.
        #[arg(long)]
        name: String,
        /// The new node's name, as in the config's nodes.
        node: String,
    },
}

pub fn run(cmd: &ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Init { dir, name, nodes } => {
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            pki::init_cluster(dir, name, &names).with_context(|| format!("cluster init in {}", dir.display()))?;
            println!("cluster {name}: CA and certificates for {} written to {}", names.join(", "), dir.display());
            println!("  {} (every node), {} (keep it off the nodes: only to add nodes)", pki::CA_CERT, pki::CA_KEY);
            for n in &names {
                println!("  {} and {} (node {n} only)", pki::node_cert_file(n), pki::node_key_file(n));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::AddNode { dir, name, node } => {
            pki::add_node(dir, name, node).with_context(|| format!("cluster add-node in {}", dir.display()))?;
            println!("cluster {name}: certificate for {node} written to {}", dir.display());
            println!("  {} and {} (node {node} only, with {})", pki::node_cert_file(node), pki::node_key_file(node), pki::CA_CERT);
            Ok(ExitCode::SUCCESS)
        }
    }
}
