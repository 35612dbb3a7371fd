//! The VRRP instance's cloud claim (issue 11, `[vrrp.cloud]`) against real
//! moto: two hagw nodes and a "cloud" namespace on one bridge; the cloud runs
//! `crates/hagw-cloud/tests/support/moto_ec2.py` (moto's EC2 server, patched
//! so AllowReassignment moves the address as on AWS, and an IMDSv2 server per
//! instance computed from moto's state). The VIP 10.0.1.100 is a secondary
//! private IP that the master claims on its ENI.

mod common;

use std::time::{Duration, Instant};

use common::Hagw;
use hagw_testkit::{bridge, veth, wait_until, Netns, Proc};

const VIP: &str = "10.0.1.100";
const CLOUD: &str = "10.0.1.250";
const MACS: [&str; 2] = ["02:00:00:00:00:0a", "02:00:00:00:00:0b"];

struct Cloud {
    _moto: Proc,
    enis: [String; 2],
}

fn launcher() -> String {
    format!(
        "{}/../hagw-cloud/tests/support/moto_ec2.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Starts moto in `ns` and waits for its one line of JSON.
fn start_cloud(ns: &Netns) -> Cloud {
    let setup = format!("{}/setup.json", ns.dir().display());
    std::fs::create_dir_all(ns.dir()).expect("dir");
    let instances: Vec<String> = (0..2)
        .map(|i| {
            format!(
                r#"{{"name": "n{n}", "mac": "{mac}", "ip": "10.0.1.{ip}", "imds": "{CLOUD}:810{n}"}}"#,
                n = i + 1,
                mac = MACS[i],
                ip = 10 + i
            )
        })
        .collect();
    std::fs::write(
        &setup,
        format!(
            r#"{{"region": "us-east-1", "vpc": "10.0.0.0/16", "subnet": "10.0.1.0/24", "instances": [{}]}}"#,
            instances.join(", ")
        ),
    )
    .expect("setup");
    let python = std::env::var("HAGW_PYTHON").unwrap_or_else(|_| "python3".into());
    let ec2 = format!("{CLOUD}:8000");
    let moto = ns.spawn(&python, &[&launcher(), "--ec2", &ec2, "--setup", &setup]);
    let mut info = serde_json::Value::Null;
    wait_until("moto's setup line", Duration::from_secs(60), || {
        assert!(moto.is_running(), "moto exited:\n{}", moto.log());
        info = moto
            .log()
            .lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("instances").is_some())
            .unwrap_or(serde_json::Value::Null);
        !info.is_null()
    });
    let eni = |n: &str| {
        info["instances"][n]["eni"]
            .as_str()
            .unwrap_or_else(|| panic!("no eni for {n}: {info}"))
            .to_string()
    };
    Cloud {
        enis: [eni("n1"), eni("n2")],
        _moto: moto,
    }
}

fn config(n: usize, priority: u8) -> String {
    format!(
        r#"[[vrrp]]
name = "gw"
interface = "eth0"
vrid = 10
priority = {priority}
advert_interval_ms = 100
preempt = false
peers = ["10.0.1.{peer}"]
virtual_addresses = ["{VIP}/24"]
garp_interval_ms = 100

[vrrp.cloud]
provider = "aws"
mode = "secondary-ip"
region = "us-east-1"
endpoint = "http://{CLOUD}:8000"
imds_endpoint = "http://{CLOUD}:810{id}"
recheck_ms = 500
"#,
        peer = if n == 0 { 11 } else { 10 },
        id = n + 1
    )
}

const CREDS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    ("AWS_SECRET_ACCESS_KEY", "secret"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

fn start(ns: &Netns, n: usize, priority: u8) -> Hagw {
    Hagw::start_env(ns, &config(n, priority), &CREDS)
}

/// Which instance's IMDS lists the VIP (the cloud's owner), by index.
fn cloud_owner(cloud: &Netns) -> Vec<usize> {
    (0..2)
        .filter(|&i| {
            let out = cloud.sh(&format!(
                "t=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://{CLOUD}:810{n}/latest/api/token) && \
                 curl -s -H \"X-aws-ec2-metadata-token: $t\" http://{CLOUD}:810{n}/latest/meta-data/network/interfaces/macs/{mac}/local-ipv4s",
                n = i + 1,
                mac = MACS[i]
            ));
            out.lines().any(|l| l.trim() == VIP)
        })
        .collect()
}

fn holds_locally(ns: &Netns) -> bool {
    ns.sh("ip -o addr show dev eth0")
        .contains(&format!(" {VIP}/"))
}

fn state(h: &Hagw) -> String {
    h.status()["vrrp"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn assign_calls(cloud: &Netns) -> u64 {
    let out = cloud.sh(&format!("curl -s http://{CLOUD}:8000/_hagw/calls"));
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["AssignPrivateIpAddresses"].as_u64())
        .unwrap_or(0)
}

/// The daemons' VRRP and cloud lines, for a failure report.
fn dump_logs(nodes: &[Netns]) {
    for n in nodes {
        let Ok(dir) = std::fs::read_dir(n.dir()) else {
            continue;
        };
        for f in dir.flatten() {
            if f.file_name().to_string_lossy().starts_with("hagw-") {
                let t = std::fs::read_to_string(f.path()).unwrap_or_default();
                let lines: Vec<&str> = t
                    .lines()
                    .filter(|l| l.contains("vrrp") || l.contains("cloud"))
                    .collect();
                eprintln!("== {}\n{}", f.path().display(), lines.join("\n"));
            }
        }
    }
}

#[test]
fn the_cloud_decides_claims_land_through_throttling_and_a_partition_moves_the_vip_once() {
    hagw_testkit::require_root();
    let sw = Netns::new("vcs");
    let nodes = [Netns::new("vc1"), Netns::new("vc2")];
    let cloud_ns = Netns::new("vcc");
    for (i, ns) in [&nodes[0], &nodes[1], &cloud_ns].into_iter().enumerate() {
        veth(ns, "eth0", &sw, &format!("p{i}"));
    }
    bridge(&sw, "br0", &["p0", "p1", "p2"]);
    for (i, ns) in nodes.iter().enumerate() {
        ns.sh(&format!(
            "ip link set eth0 down && ip link set eth0 address {} && ip link set eth0 up && ip addr add 10.0.1.{}/24 dev eth0",
            MACS[i],
            10 + i
        ));
    }
    cloud_ns.sh(&format!("ip addr add {CLOUD}/24 dev eth0"));
    let cloud = start_cloud(&cloud_ns);

    // 1. The higher priority becomes master and claims the VIP on its ENI.
    let mut a = start(&nodes[0], 0, 200);
    let b = start(&nodes[1], 1, 100);
    wait_until("n1 Master", Duration::from_secs(10), || {
        state(&a) == "Master"
    });
    wait_until("the VIP on n1's ENI", Duration::from_secs(15), || {
        cloud_owner(&cloud_ns) == [0]
    });
    wait_until(
        "n1's status shows the cloud owner",
        Duration::from_secs(5),
        || a.status()["vrrp"][0]["cloud"]["owner"].as_str() == Some(cloud.enis[0].as_str()),
    );
    assert!(holds_locally(&nodes[0]) && !holds_locally(&nodes[1]));

    // 2. Failover through throttling: the API answers RequestLimitExceeded
    // three times; the claim still lands, after backoff.
    cloud_ns.sh(&format!(
        "curl -s -X POST -d '{{\"action\": \"AssignPrivateIpAddresses\", \"code\": \"RequestLimitExceeded\", \"status\": 503, \"count\": 3}}' http://{CLOUD}:8000/_hagw/fail"
    ));
    let before = assign_calls(&cloud_ns);
    a.proc.stop();
    let t0 = Instant::now();
    wait_until("n2 Master", Duration::from_secs(5), || {
        state(&b) == "Master"
    });
    wait_until("the VIP on n2's ENI", Duration::from_secs(20), || {
        cloud_owner(&cloud_ns) == [1]
    });
    let took = t0.elapsed();
    assert_eq!(
        assign_calls(&cloud_ns) - before,
        4,
        "three throttled attempts, then the one that landed"
    );
    assert!(took >= Duration::from_millis(300), "backed off: {took:?}");
    assert!(holds_locally(&nodes[1]));

    // 3. n1 comes back: no preempt, n2 keeps the VIP.
    a = start(&nodes[0], 0, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&a), "Backup");
    assert_eq!(cloud_owner(&cloud_ns), [1]);

    // 4. Partition: VRRP dropped between the nodes both ways for 20 s (the
    // cloud still answers both). n1 takes over and claims; n2, the owner so
    // far, sees the VIP gone in the cloud and steps down (fenced). The
    // owner changes once, and never comes back to n2.
    let claims = assign_calls(&cloud_ns);
    sw.sh("nft add table bridge part && nft add chain bridge part f '{ type filter hook forward priority 0; }' && nft add rule bridge part f ip protocol 112 drop");
    let end = Instant::now() + Duration::from_secs(20);
    let mut owners = vec![1usize];
    while Instant::now() < end {
        if let [o] = cloud_owner(&cloud_ns)[..] {
            if owners.last() != Some(&o) {
                owners.push(o);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if owners.len() > 2 {
        dump_logs(&nodes);
    }
    assert!(
        owners.len() <= 2,
        "the cloud's owner changed more than once: {owners:?}"
    );
    assert!(
        assign_calls(&cloud_ns) - claims <= 1,
        "at most one claim in the partition"
    );
    let owner = cloud_owner(&cloud_ns);
    assert_eq!(owner.len(), 1, "one owner in the cloud");
    let holders: Vec<usize> = (0..2).filter(|&i| holds_locally(&nodes[i])).collect();
    assert_eq!(
        holders, owner,
        "exactly the cloud's owner holds the VIP locally"
    );
    let loser = if owner == [0] { &b } else { &a };
    assert_eq!(state(loser), "Fenced");

    // 5. Heal: the fenced node hears its peer and becomes Backup; nothing moves.
    sw.sh("nft delete table bridge part");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cloud_owner(&cloud_ns), owner);
    assert_eq!(state(loser), "Backup");
    let holders: Vec<usize> = (0..2).filter(|&i| holds_locally(&nodes[i])).collect();
    assert_eq!(holders, owner);
}
