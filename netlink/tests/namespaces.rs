//! The requests against the real kernel, each in a private network
//! namespace of its own thread, so the host's network is never touched.

use std::net::Ipv4Addr;
use std::process::Command;

use netlink::nat::{self, MasqueradeRange};
use netlink::route::{self, Rtnetlink};

/// Moves the calling thread into a new network namespace; `None` (with the
/// reason printed) where this host does not allow it.
fn private_namespace() -> Option<()> {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        Ok(()) => Some(()),
        Err(e) => {
            eprintln!("skipped: cannot create a network namespace here ({e}); needs root");
            None
        }
    }
}

#[test]
fn veth_pair_reaches_the_peer_namespace_with_address_and_route() {
    std::thread::spawn(|| {
        private_namespace()?;
        // The peer side: a process in yet another namespace.
        let mut peer = Command::new("unshare")
            .args(["--net", "sleep", "30"])
            .spawn()
            .expect("unshare(1) from util-linux");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let netlink = Rtnetlink::open().unwrap();

        netlink.create_veth("dc-test", "eth0", peer.id()).unwrap();
        let index = route::index_of("dc-test").unwrap();
        netlink.set_link_up(index, 65520).unwrap();
        netlink
            .add_address(index, Ipv4Addr::new(172, 31, 1, 1), 24)
            .unwrap();

        let here = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        assert!(here.contains("dc-test:"), "{here}");
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
        // The address's subnet route on the veth: 172.31.1.0 is 00011FAC.
        assert!(
            routes.lines().any(|l| l.starts_with("dc-test\t00011FAC")),
            "{routes}"
        );
        let peer_links = Command::new("nsenter")
            .args(["-t", &peer.id().to_string(), "-n", "cat", "/proc/net/dev"])
            .output()
            .unwrap();
        let peer_links = String::from_utf8_lossy(&peer_links.stdout);
        assert!(peer_links.contains("eth0:"), "{peer_links}");
        assert!(route::index_of("eth0").is_err(), "the peer stayed here");
        let _ = peer.kill();
        let _ = peer.wait();
        Some(())
    })
    .join()
    .unwrap();
}

#[test]
fn masquerade_rule_installs_and_reinstalls_as_one_rule() {
    std::thread::spawn(|| {
        private_namespace()?;
        let range = MasqueradeRange {
            prefix: Ipv4Addr::new(172, 31, 0, 0),
            octets: 2,
        };
        if let Err(e) = nat::masquerade(range) {
            eprintln!("skipped: nftables NAT is unavailable in this kernel ({e})");
            return None;
        }
        nat::masquerade(range).expect("a second install replaces the first");
        Some(())
    })
    .join()
    .unwrap();
}
