//! hagw-cloud against real moto (EC2 and IAM), patched by
//! `support/moto_ec2.py` so AllowReassignment moves the address like on
//! AWS, with a per-instance IMDSv2 computed from moto's state, and fault
//! injection for throttling. Each test starts its own launcher on loopback.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hagw_cloud::{
    ChainSources, CredentialSource, Credentials, CredentialsChain, Ec2Client, Ec2Config, Imds,
    ImdsConfig, RetryPolicy,
};
use ipnet::IpNet;
use support::{pair_setup, Moto};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        max_total: Duration::from_secs(20),
    }
}

fn client_with(moto: &Moto, chain: CredentialsChain) -> Ec2Client {
    let mut config = Ec2Config::new(moto.region());
    config.endpoint = Some(moto.ec2_url());
    config.retry = fast_retry();
    Ec2Client::new(config, Arc::new(chain)).expect("client")
}

/// A client with keys moto does not check (authentication is off until a
/// test turns it on).
fn client(moto: &Moto) -> Ec2Client {
    client_with(
        moto,
        CredentialsChain::fixed(Credentials::new("AKIAHAGWTEST", "secret", None)),
    )
}

fn imds(url: &str) -> Arc<Imds> {
    let config = ImdsConfig {
        endpoint: url.to_string(),
        ..ImdsConfig::default()
    };
    Arc::new(Imds::new(config).expect("imds"))
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

#[tokio::test]
async fn claim_lands_and_shows_in_describe_and_imds() {
    let moto = Moto::start(pair_setup(false));
    let (a, b) = (moto.instance("a"), moto.instance("b"));
    let ec2 = client(&moto);

    let report = ec2.claim_secondary_ip(&a.eni, VIP).await.expect("claim");
    assert_eq!(report.eni, a.eni);
    assert_eq!(report.call.attempts, 1);
    assert!(report.call.request_id.is_some(), "{report:?}");
    assert!(report.assigned.contains(&VIP), "{report:?}");

    let enis = ec2
        .describe_network_interfaces(&[&a.eni], &[])
        .await
        .expect("describe");
    assert_eq!(enis.len(), 1);
    assert!(enis[0].holds(VIP.into()), "{:?}", enis[0]);
    assert_eq!(enis[0].primary_ip(), Some(Ipv4Addr::new(10, 0, 1, 10)));
    assert_eq!(enis[0].mac.as_deref(), Some(a.mac.as_str()));
    assert_eq!(enis[0].instance_id.as_deref(), Some(a.instance_id.as_str()));

    let md = imds(&a.imds);
    assert_eq!(md.interface_id(&a.mac).await.expect("interface-id"), a.eni);
    assert_eq!(
        md.local_ipv4s(&a.mac).await.expect("local-ipv4s"),
        [Ipv4Addr::new(10, 0, 1, 10), VIP]
    );
    assert_eq!(md.region().await.expect("region"), "eu-west-1");
    assert_eq!(md.instance_id().await.expect("instance-id"), a.instance_id);
    assert_eq!(md.macs().await.expect("macs"), [a.mac.as_str()]);
    assert_eq!(
        md.vpc_ipv4_cidr_blocks(&a.mac).await.expect("vpc blocks"),
        ["10.0.0.0/16".parse::<ipnet::Ipv4Net>().expect("net")]
    );
    assert_eq!(
        md.subnet_ipv4_cidr_block(&a.mac).await.expect("subnet"),
        "10.0.1.0/24".parse().expect("net")
    );
    assert!(md
        .ipv6s(&a.mac)
        .await
        .expect("no ipv6 is 404 -> empty")
        .is_empty());
    let err = md
        .interface_id("02:00:00:00:00:ff")
        .await
        .expect_err("unknown MAC");
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(
        err.to_string().contains("02:00:00:00:00:ff/interface-id"),
        "{err}"
    );

    assert_eq!(
        ec2.owner_of_private_ip(VIP, &[&a.eni, &b.eni])
            .await
            .expect("owner"),
        Some(a.eni.clone())
    );
}

#[tokio::test]
async fn reassignment_moves_the_ip_from_a_to_b() {
    let mut setup = pair_setup(false);
    setup["instances"][0]["secondary"] = serde_json::json!([VIP.to_string()]);
    let moto = Moto::start(setup);
    let (a, b) = (moto.instance("a"), moto.instance("b"));
    let ec2 = client(&moto);
    let (imds_a, imds_b) = (imds(&a.imds), imds(&b.imds));
    assert!(imds_a.local_ipv4s(&a.mac).await.expect("a").contains(&VIP));
    let hints = [a.eni.as_str(), b.eni.as_str()];
    assert_eq!(
        ec2.owner_of_private_ip(VIP, &hints).await.expect("owner"),
        Some(a.eni.clone())
    );

    ec2.claim_secondary_ip(&b.eni, VIP)
        .await
        .expect("claim on b");

    let enis = ec2
        .describe_network_interfaces(&hints, &[])
        .await
        .expect("describe");
    let holders: Vec<&str> = enis
        .iter()
        .filter(|e| e.holds(VIP.into()))
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(holders, [b.eni.as_str()], "the VIP is on b only");
    assert_eq!(
        imds_a.local_ipv4s(&a.mac).await.expect("a"),
        [Ipv4Addr::new(10, 0, 1, 10)]
    );
    assert_eq!(
        imds_b.local_ipv4s(&b.mac).await.expect("b"),
        [Ipv4Addr::new(10, 0, 1, 11), VIP]
    );
    assert_eq!(
        ec2.owner_of_private_ip(VIP, &hints).await.expect("owner"),
        Some(b.eni.clone())
    );
    // A stale hint is skipped; the filter then finds primaries (moto's
    // filter does not look at secondaries, AWS's does).
    assert_eq!(
        ec2.owner_of_private_ip(Ipv4Addr::new(10, 0, 1, 10), &["eni-0000000000000dead"])
            .await
            .expect("owner by filter"),
        Some(a.eni.clone())
    );
    assert_eq!(
        ec2.owner_of_private_ip(Ipv4Addr::new(10, 0, 1, 99), &[])
            .await
            .expect("nobody"),
        None
    );

    // Back to a, and the plain Unassign call.
    ec2.claim_secondary_ip(&a.eni, VIP)
        .await
        .expect("claim back");
    assert!(!imds_b.local_ipv4s(&b.mac).await.expect("b").contains(&VIP));
    ec2.unassign_private_ip_addresses(&a.eni, &[VIP])
        .await
        .expect("unassign");
    assert_eq!(
        ec2.owner_of_private_ip(VIP, &hints).await.expect("owner"),
        None
    );
}

#[tokio::test]
async fn replace_route_moves_the_next_hop() {
    let moto = Moto::start(pair_setup(false));
    let (a, b) = (moto.instance("a"), moto.instance("b"));
    let ec2 = client(&moto);
    let table = moto.route_table();
    let dest = net("192.168.50.0/24");

    assert_eq!(
        ec2.route_target(&table, dest).await.expect("target"),
        Some(a.eni.clone())
    );
    let call = ec2
        .replace_route(&table, dest, &b.eni)
        .await
        .expect("replace");
    assert_eq!(call.attempts, 1);
    assert_eq!(
        ec2.route_target(&table, dest).await.expect("target"),
        Some(b.eni.clone())
    );
    assert_eq!(
        ec2.route_target(&table, net("192.168.51.0/24"))
            .await
            .expect("none"),
        None
    );

    let err = ec2
        .replace_route(&table, net("192.168.99.0/24"), &b.eni)
        .await
        .expect_err("no such route");
    assert_eq!(err.code(), Some("InvalidParameterValue"), "{err}");
    assert_eq!(err.attempts, 1, "invalid parameters are not retried");
    let err = ec2
        .route_target("rtb-0000000000000dead", dest)
        .await
        .expect_err("no table");
    assert_eq!(err.code(), Some("InvalidRouteTableID.NotFound"), "{err}");
}

#[tokio::test]
async fn throttled_three_times_then_succeeds_with_backoff() {
    let moto = Moto::start(pair_setup(false));
    let a = moto.instance("a");
    let ec2 = client(&moto);
    let before = moto.calls("AssignPrivateIpAddresses");
    moto.inject("AssignPrivateIpAddresses", "RequestLimitExceeded", 503, 3);

    let report = ec2
        .claim_secondary_ip(&a.eni, VIP)
        .await
        .expect("claim after throttling");
    assert_eq!(report.call.attempts, 4, "{report:?}");
    assert_eq!(moto.calls("AssignPrivateIpAddresses") - before, 4);
    // Equal jitter: at least half of 100 + 200 + 400 ms was waited.
    assert!(
        report.call.elapsed >= Duration::from_millis(350),
        "{report:?}"
    );
    let enis = ec2
        .describe_network_interfaces(&[&a.eni], &[])
        .await
        .expect("describe");
    assert!(enis[0].holds(VIP.into()));
}

#[tokio::test]
async fn throttling_gives_up_after_max_attempts() {
    let moto = Moto::start(pair_setup(false));
    let a = moto.instance("a");
    let mut config = Ec2Config::new(moto.region());
    config.endpoint = Some(moto.ec2_url());
    config.retry = RetryPolicy {
        max_attempts: 3,
        ..fast_retry()
    };
    let chain = CredentialsChain::fixed(Credentials::new("AKIAHAGWTEST", "secret", None));
    let ec2 = Ec2Client::new(config, Arc::new(chain)).expect("client");
    moto.inject("AssignPrivateIpAddresses", "RequestLimitExceeded", 503, 10);

    let err = ec2
        .claim_secondary_ip(&a.eni, VIP)
        .await
        .expect_err("still throttled");
    assert_eq!(err.attempts, 3, "{err}");
    let api = err.api().expect("an API error");
    assert_eq!(
        (api.code.as_str(), api.status),
        ("RequestLimitExceeded", 503)
    );
    assert!(api.request_id.is_some(), "{api:?}");
}

#[tokio::test]
async fn auth_errors_are_not_retried_and_carry_code_and_request_id() {
    let moto = Moto::start(pair_setup(true));
    let a = moto.instance("a");
    moto.enable_auth();
    let (akid, secret) = moto.iam_keys("allowed");

    // Right keys: moto verifies our SigV4 signature and lets the call in.
    let good = client_with(
        &moto,
        CredentialsChain::fixed(Credentials::new(&akid, &secret, None)),
    );
    good.claim_secondary_ip(&a.eni, VIP)
        .await
        .expect("signed call accepted");

    // Wrong secret: AuthFailure, one attempt only.
    let before = moto.calls("DescribeNetworkInterfaces");
    let bad = client_with(
        &moto,
        CredentialsChain::fixed(Credentials::new(&akid, "wrong", None)),
    );
    let err = bad
        .describe_network_interfaces(&[&a.eni], &[])
        .await
        .expect_err("bad signature");
    let api = err.api().expect("an API error");
    assert_eq!(
        (api.code.as_str(), api.status),
        ("AuthFailure", 401),
        "{err}"
    );
    assert!(
        api.request_id.as_deref().is_some_and(|r| !r.is_empty()),
        "{api:?}"
    );
    assert_eq!(err.attempts, 1);
    assert_eq!(
        moto.calls("DescribeNetworkInterfaces") - before,
        1,
        "not retried"
    );

    // A user without ec2 permissions: moto says AccessDenied (AWS:
    // UnauthorizedOperation); neither is retried.
    let (akid, secret) = moto.iam_keys("denied");
    let denied = client_with(
        &moto,
        CredentialsChain::fixed(Credentials::new(akid, secret, None)),
    );
    let err = denied
        .claim_secondary_ip(&a.eni, VIP)
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Some("AccessDenied"), "{err}");
    assert_eq!(err.attempts, 1);
}

#[tokio::test]
async fn credentials_chain_from_a_temp_shared_credentials_file() {
    let moto = Moto::start(pair_setup(true));
    let a = moto.instance("a");
    moto.enable_auth();
    let (akid, secret) = moto.iam_keys("allowed");
    let path = std::env::temp_dir().join(format!("hagw-cloud-credentials-{}", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "[default]\naws_access_key_id = AKIAWRONG\naws_secret_access_key = wrong\n\n\
             [gateway]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n"
        ),
    )
    .expect("write credentials file");
    let chain = CredentialsChain::new(ChainSources {
        env: None,
        shared_file: Some(path.clone()),
        profile: "gateway".into(),
        imds: None,
        refresh_before: Duration::from_secs(300),
    });
    let creds = chain.credentials().await.expect("from the file");
    assert_eq!(
        creds.source,
        CredentialSource::SharedFile {
            path: path.clone(),
            profile: "gateway".into()
        }
    );
    let ec2 = client_with(&moto, chain);
    let enis = ec2.describe_network_interfaces(&[&a.eni], &[]).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(enis.expect("signed with the file's keys").len(), 1);
}

#[tokio::test]
async fn credentials_chain_falls_back_to_the_instance_role() {
    let moto = Moto::start(pair_setup(true));
    let a = moto.instance("a");
    moto.enable_auth();
    let chain = CredentialsChain::new(ChainSources {
        env: None,
        shared_file: Some("/nonexistent/hagw/credentials".into()),
        profile: "default".into(),
        imds: Some(imds(&a.imds)),
        refresh_before: Duration::from_secs(300),
    });
    let creds = chain.credentials().await.expect("instance role");
    assert_eq!(
        creds.source,
        CredentialSource::InstanceRole("hagw-test-role".into())
    );
    assert!(
        creds.access_key_id.starts_with("ASIA"),
        "STS keys: {creds:?}"
    );
    assert!(creds.session_token.is_some() && creds.expires_at.is_some());
    let ec2 = client_with(&moto, chain);
    ec2.claim_secondary_ip(&a.eni, VIP)
        .await
        .expect("signed with the role's keys");
}

#[tokio::test]
async fn imds_gets_a_new_token_after_401() {
    let moto = Moto::start(pair_setup(false));
    let a = moto.instance("a");
    let md = imds(&a.imds);
    assert_eq!(md.interface_id(&a.mac).await.expect("first"), a.eni);
    moto.expire_imds_tokens();
    assert_eq!(md.interface_id(&a.mac).await.expect("after 401"), a.eni);
}

#[tokio::test]
async fn one_rate_limit_paces_all_calls_of_a_client_and_its_clones() {
    let moto = Moto::start(pair_setup(false));
    let (a, b) = (moto.instance("a"), moto.instance("b"));
    let mut config = Ec2Config::new(moto.region());
    config.endpoint = Some(moto.ec2_url());
    config.rate_limit = hagw_cloud::RateLimit {
        per_second: 10.0,
        burst: 1,
    };
    let chain = CredentialsChain::fixed(Credentials::new("AKIAHAGWTEST", "secret", None));
    let ec2 = Ec2Client::new(config, Arc::new(chain)).expect("client");
    let clone = ec2.clone();
    let (ids_a, ids_b, table) = ([a.eni.as_str()], [b.eni.as_str()], moto.route_table());
    let started = std::time::Instant::now();
    let (r1, r2, r3, r4) = tokio::join!(
        ec2.describe_network_interfaces(&ids_a, &[]),
        clone.describe_network_interfaces(&ids_b, &[]),
        ec2.route_target(&table, net("192.168.50.0/24")),
        clone.claim_secondary_ip(&b.eni, VIP),
    );
    let elapsed = started.elapsed();
    for r in [
        r1.map(|_| ()),
        r2.map(|_| ()),
        r3.map(|_| ()),
        r4.map(|_| ()),
    ] {
        r.expect("call");
    }
    // Burst 1, then 10/s: the 4th call cannot start before 300 ms.
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
}
