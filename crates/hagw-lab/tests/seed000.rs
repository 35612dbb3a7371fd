//! Seed 000 in test mode, without any routing daemon (run as root): the
//! wiring forwards and SNATs through either router, and the silent cut
//! silences exactly the link it names, until restored.

use hagw_lab::Seed000;

const SERVER: &str = "203.0.113.1";

/// One ping within 3 s (after a restore, the host's ARP for the router may
/// wait for its next probe).
fn reaches_server(lab: &Seed000) -> bool {
    lab.host.try_sh(&format!("ping -c1 -W3 {SERVER}")).is_ok()
}

/// No answer to a ping within 1 s.
fn silent(lab: &Seed000, addr: &str) -> bool {
    lab.host.try_sh(&format!("ping -c1 -W1 {addr}")).is_err()
}

#[test]
fn each_router_forwards_with_snat_and_a_cut_silences_it_until_restored() {
    let lab = Seed000::build();
    // Without the internet's way back to the LAN only SNAT brings replies home.
    lab.inet.sh("ip route del 192.168.100.0/24");
    for (router, addr) in [("r1", "192.168.100.20"), ("r2", "192.168.100.21")] {
        lab.host.sh(&format!("ip route replace default via {addr}"));
        assert!(reaches_server(&lab), "through {router}");

        let cut = lab.cut(router);
        assert!(silent(&lab, SERVER), "{router}'s LAN link is cut");
        // Silent: not even ARP gets an answer.
        lab.host.sh("ip neigh flush dev eth1");
        assert!(silent(&lab, addr), "{router} answered through the cut");
        cut.restore();
        assert!(reaches_server(&lab), "through {router} after the restore");

        let up = lab.cut_uplink(router);
        assert!(silent(&lab, SERVER), "{router}'s uplink is cut");
        lab.host.sh(&format!("ping -c1 -W3 {addr}"));
        drop(up);
        assert!(
            reaches_server(&lab),
            "through {router} after the guard dropped"
        );
    }
}

#[test]
fn the_switch_answers_as_the_subnet_gateway() {
    let lab = Seed000::build();
    lab.host.sh("ping -c1 -W2 192.168.100.1");
    assert_eq!(lab.router("r2").name(), lab.r2.name());
}
