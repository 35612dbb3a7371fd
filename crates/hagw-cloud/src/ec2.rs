//! The EC2 Query API (version 2016-11-15) as pure functions: requests are
//! built as [`QueryRequest`]s (a form body), responses are parsed from their
//! XML text. No I/O here, so all of it is tested with captured bodies;
//! [`crate::Ec2Client`] sends them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use roxmltree::{Document, Node};

use crate::sigv4::uri_encode;

/// The EC2 API version every request names.
pub const API_VERSION: &str = "2016-11-15";

/// One EC2 Query API call: `Action`, `Version` and the parameters, in
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRequest {
    pub action: &'static str,
    pub params: Vec<(String, String)>,
}

impl QueryRequest {
    fn new(action: &'static str) -> QueryRequest {
        QueryRequest {
            action,
            params: Vec::new(),
        }
    }

    fn param(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.params.push((name.into(), value.to_string()));
        self
    }

    /// `Name.1`, `Name.2`... for each value.
    fn list<T: ToString>(mut self, name: &str, values: &[T]) -> Self {
        for (i, v) in values.iter().enumerate() {
            self.params
                .push((format!("{name}.{}", i + 1), v.to_string()));
        }
        self
    }

    fn filters(mut self, filters: &[Filter]) -> Self {
        for (i, f) in filters.iter().enumerate() {
            let n = i + 1;
            self.params
                .push((format!("Filter.{n}.Name"), f.name.clone()));
            for (j, v) in f.values.iter().enumerate() {
                self.params
                    .push((format!("Filter.{n}.Value.{}", j + 1), v.clone()));
            }
        }
        self
    }

    /// The `application/x-www-form-urlencoded` body.
    pub fn body(&self) -> String {
        let mut out = format!("Action={}&Version={API_VERSION}", self.action);
        for (k, v) in &self.params {
            out.push('&');
            out.push_str(&uri_encode(k));
            out.push('=');
            out.push_str(&uri_encode(v));
        }
        out
    }

    /// The value of parameter `name` (tests and logs).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the action changes state; used for logging levels.
    pub fn is_mutating(&self) -> bool {
        !self.action.starts_with("Describe")
    }
}

/// A `Filter.N` of a Describe call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new(name: &str, value: impl ToString) -> Filter {
        Filter {
            name: name.to_string(),
            values: vec![value.to_string()],
        }
    }
}

/// `AssignPrivateIpAddresses`: puts `ips` on `eni` as secondary addresses.
/// With `allow_reassignment` AWS moves an address that another interface
/// of the subnet holds (the floating VIP case).
pub fn assign_private_ip_addresses(
    eni: &str,
    ips: &[Ipv4Addr],
    allow_reassignment: bool,
) -> QueryRequest {
    QueryRequest::new("AssignPrivateIpAddresses")
        .param("NetworkInterfaceId", eni)
        .list("PrivateIpAddress", ips)
        .param("AllowReassignment", allow_reassignment)
}

/// `UnassignPrivateIpAddresses`: removes secondary addresses from `eni`.
pub fn unassign_private_ip_addresses(eni: &str, ips: &[Ipv4Addr]) -> QueryRequest {
    QueryRequest::new("UnassignPrivateIpAddresses")
        .param("NetworkInterfaceId", eni)
        .list("PrivateIpAddress", ips)
}

/// `AssignIpv6Addresses`: adds IPv6 addresses to `eni` (IPv6 addresses
/// cannot be reassigned: unassign them from the other interface first).
pub fn assign_ipv6_addresses(eni: &str, ips: &[Ipv6Addr]) -> QueryRequest {
    QueryRequest::new("AssignIpv6Addresses")
        .param("NetworkInterfaceId", eni)
        .list("Ipv6Addresses", ips)
}

/// `UnassignIpv6Addresses`.
pub fn unassign_ipv6_addresses(eni: &str, ips: &[Ipv6Addr]) -> QueryRequest {
    QueryRequest::new("UnassignIpv6Addresses")
        .param("NetworkInterfaceId", eni)
        .list("Ipv6Addresses", ips)
}

/// `ReplaceRoute`: points the route for `destination` in `table` at `eni`.
pub fn replace_route(table: &str, destination: IpNet, eni: &str) -> QueryRequest {
    let dest_param = match destination {
        IpNet::V4(_) => "DestinationCidrBlock",
        IpNet::V6(_) => "DestinationIpv6CidrBlock",
    };
    QueryRequest::new("ReplaceRoute")
        .param("RouteTableId", table)
        .param(dest_param, destination.trunc())
        .param("NetworkInterfaceId", eni)
}

/// `DescribeNetworkInterfaces` by id and/or filters.
pub fn describe_network_interfaces<S: AsRef<str>>(ids: &[S], filters: &[Filter]) -> QueryRequest {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    QueryRequest::new("DescribeNetworkInterfaces")
        .list("NetworkInterfaceId", &ids)
        .filters(filters)
}

/// `DescribeRouteTables` by id and/or filters.
pub fn describe_route_tables<S: AsRef<str>>(ids: &[S], filters: &[Filter]) -> QueryRequest {
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    QueryRequest::new("DescribeRouteTables")
        .list("RouteTableId", &ids)
        .filters(filters)
}

/// An error answer of the EC2 API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message} (HTTP {status}, request id {})", request_id.as_deref().unwrap_or("none"))]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

/// A response body that is not what the action returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct ParseError {
    pub what: String,
}

fn parse_err(what: impl Into<String>) -> ParseError {
    ParseError { what: what.into() }
}

fn document(xml: &str) -> Result<Document<'_>, ParseError> {
    Document::parse(xml).map_err(|e| parse_err(format!("not XML: {e}")))
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The `<item>`s of the set element `name` under `node`.
fn items<'a, 'i>(node: Node<'a, 'i>, name: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(node, name)
        .into_iter()
        .flat_map(|set| set.children())
        .filter(|c| c.is_element() && c.tag_name().name() == "item")
}

fn parse_field<T: std::str::FromStr>(
    node: Node<'_, '_>,
    name: &str,
) -> Result<Option<T>, ParseError>
where
    T::Err: std::fmt::Display,
{
    child_text(node, name)
        .map(|t| {
            t.parse()
                .map_err(|e: T::Err| parse_err(format!("<{name}>{t}</{name}>: {e}")))
        })
        .transpose()
}

/// The root element, checked to be `<{action}Response>`.
fn response_root<'a, 'i>(doc: &'a Document<'i>, action: &str) -> Result<Node<'a, 'i>, ParseError> {
    let root = doc.root_element();
    let name = root.tag_name().name();
    if name.strip_suffix("Response") != Some(action) {
        return Err(parse_err(format!(
            "expected <{action}Response>, got <{name}>"
        )));
    }
    Ok(root)
}

/// The `requestId` of a success body (`RequestID`/`RequestId` of an error).
pub fn request_id(xml: &str) -> Option<String> {
    let doc = Document::parse(xml).ok()?;
    let found = doc.descendants().find(|n| {
        n.is_element() && matches!(n.tag_name().name(), "requestId" | "RequestID" | "RequestId")
    });
    found
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Parses an error answer: EC2's `<Response><Errors><Error><Code>...`
/// `<RequestID>`, also the `<ErrorResponse>` and `RequestId` spellings of
/// other AWS front ends. A body that is no AWS error (a proxy's HTML page,
/// an empty 503) still gives an error, coded `HTTP<status>`.
/// `header_request_id` (`x-amzn-requestid`) fills in a missing request id.
pub fn parse_error(status: u16, body: &str, header_request_id: Option<&str>) -> ApiError {
    let header_id = header_request_id
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let fallback = || ApiError {
        status,
        code: format!("HTTP{status}"),
        message: body.trim().chars().take(200).collect(),
        request_id: header_id.clone(),
    };
    let Ok(doc) = Document::parse(body) else {
        return fallback();
    };
    let Some(error) = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")
    else {
        return fallback();
    };
    let Some(code) = child_text(error, "Code") else {
        return fallback();
    };
    ApiError {
        status,
        code: code.to_string(),
        message: child_text(error, "Message").unwrap_or_default().to_string(),
        request_id: request_id(body).or(header_id),
    }
}

/// Checks a body whose only content is `<return>true</return>` (or
/// nothing but a request id): `ReplaceRoute`, `UnassignPrivateIpAddresses`.
pub fn parse_return(action: &str, xml: &str) -> Result<(), ParseError> {
    let doc = document(xml)?;
    let root = response_root(&doc, action)?;
    match child_text(root, "return") {
        None | Some("true") => Ok(()),
        Some(other) => Err(parse_err(format!("<return>{other}</return>"))),
    }
}

/// What `AssignPrivateIpAddresses` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPrivateIps {
    pub eni: String,
    pub assigned: Vec<Ipv4Addr>,
}

pub fn parse_assign_private_ip_addresses(xml: &str) -> Result<AssignedPrivateIps, ParseError> {
    let doc = document(xml)?;
    let root = response_root(&doc, "AssignPrivateIpAddresses")?;
    let assigned = items(root, "assignedPrivateIpAddressesSet")
        .filter_map(|i| parse_field(i, "privateIpAddress").transpose())
        .collect::<Result<_, _>>()?;
    Ok(AssignedPrivateIps {
        eni: child_text(root, "networkInterfaceId")
            .unwrap_or_default()
            .to_string(),
        assigned,
    })
}

/// `AssignIpv6Addresses`' answer: the addresses now on the interface.
pub fn parse_assign_ipv6_addresses(xml: &str) -> Result<Vec<Ipv6Addr>, ParseError> {
    let doc = document(xml)?;
    let root = response_root(&doc, "AssignIpv6Addresses")?;
    items(root, "assignedIpv6Addresses")
        .filter_map(|i| i.text().map(str::trim))
        .map(|t| {
            t.parse()
                .map_err(|e| parse_err(format!("assigned IPv6 {t:?}: {e}")))
        })
        .collect()
}

/// A private IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateIp {
    pub address: Ipv4Addr,
    pub primary: bool,
}

/// The parts of an ENI hagw looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkInterface {
    pub id: String,
    pub mac: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_id: Option<String>,
    pub status: Option<String>,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
    pub source_dest_check: Option<bool>,
    /// All private IPv4 addresses, primary included.
    pub private_ips: Vec<PrivateIp>,
    pub ipv6s: Vec<Ipv6Addr>,
}

impl NetworkInterface {
    /// Whether the interface holds `ip` (primary or secondary, v4 or v6).
    pub fn holds(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.private_ips.iter().any(|p| p.address == v4),
            IpAddr::V6(v6) => self.ipv6s.contains(&v6),
        }
    }

    /// The primary private IPv4 address.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.private_ips
            .iter()
            .find(|p| p.primary)
            .map(|p| p.address)
    }
}

pub fn parse_describe_network_interfaces(xml: &str) -> Result<Vec<NetworkInterface>, ParseError> {
    let doc = document(xml)?;
    let root = response_root(&doc, "DescribeNetworkInterfaces")?;
    items(root, "networkInterfaceSet").map(parse_eni).collect()
}

fn parse_eni(item: Node<'_, '_>) -> Result<NetworkInterface, ParseError> {
    let id = child_text(item, "networkInterfaceId")
        .ok_or_else(|| parse_err("network interface without networkInterfaceId"))?;
    let mut private_ips = Vec::new();
    for ip in items(item, "privateIpAddressesSet") {
        let Some(address) = parse_field(ip, "privateIpAddress")? else {
            continue;
        };
        private_ips.push(PrivateIp {
            address,
            primary: child_text(ip, "primary") == Some("true"),
        });
    }
    // Old answers carry only the top-level primary address.
    if private_ips.is_empty() {
        if let Some(address) = parse_field(item, "privateIpAddress")? {
            private_ips.push(PrivateIp {
                address,
                primary: true,
            });
        }
    }
    let ipv6s = items(item, "ipv6AddressesSet")
        .filter_map(|i| parse_field(i, "ipv6Address").transpose())
        .collect::<Result<_, _>>()?;
    let owned = |name: &str| child_text(item, name).map(str::to_string);
    Ok(NetworkInterface {
        id: id.to_string(),
        mac: owned("macAddress").map(|m| m.to_ascii_lowercase()),
        subnet_id: owned("subnetId"),
        vpc_id: owned("vpcId"),
        status: owned("status"),
        instance_id: child(item, "attachment")
            .and_then(|a| child_text(a, "instanceId"))
            .map(str::to_string),
        source_dest_check: child_text(item, "sourceDestCheck").map(|v| v == "true"),
        private_ips,
        ipv6s,
    })
}

/// A route of a route table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `destinationCidrBlock` or `destinationIpv6CidrBlock`; `None` for
    /// prefix-list routes.
    pub destination: Option<IpNet>,
    pub network_interface_id: Option<String>,
    pub instance_id: Option<String>,
    pub gateway_id: Option<String>,
    /// `active` or `blackhole` (target gone).
    pub state: Option<String>,
}

/// A route table and its routes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: Option<String>,
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route for exactly `destination`.
    pub fn route(&self, destination: IpNet) -> Option<&Route> {
        let destination = destination.trunc();
        self.routes
            .iter()
            .find(|r| r.destination.map(|d| d.trunc()) == Some(destination))
    }
}

pub fn parse_describe_route_tables(xml: &str) -> Result<Vec<RouteTable>, ParseError> {
    let doc = document(xml)?;
    let root = response_root(&doc, "DescribeRouteTables")?;
    items(root, "routeTableSet")
        .map(|table| {
            let id = child_text(table, "routeTableId")
                .ok_or_else(|| parse_err("route table without routeTableId"))?;
            let routes = items(table, "routeSet")
                .map(|r| {
                    let destination = match parse_field::<IpNet>(r, "destinationCidrBlock")? {
                        Some(d) => Some(d),
                        None => parse_field(r, "destinationIpv6CidrBlock")?,
                    };
                    let owned = |name: &str| child_text(r, name).map(str::to_string);
                    Ok(Route {
                        destination,
                        network_interface_id: owned("networkInterfaceId"),
                        instance_id: owned("instanceId"),
                        gateway_id: owned("gatewayId"),
                        state: owned("state"),
                    })
                })
                .collect::<Result<_, ParseError>>()?;
            Ok(RouteTable {
                id: id.to_string(),
                vpc_id: child_text(table, "vpcId").map(str::to_string),
                routes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bodies as captured from moto 5 (same shapes as AWS's documented
    // examples), trimmed.
    const DESCRIBE_ENI: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><networkInterfaceSet><item><availabilityZone>us-east-1c</availabilityZone><description/><groupSet><item><groupId>sg-155af6430aadc7285</groupId><groupName>default</groupName></item></groupSet><interfaceType>interface</interfaceType><ipv6AddressesSet><item><ipv6Address>2001:db8::5</ipv6Address></item></ipv6AddressesSet><macAddress>02:00:00:CC:3c:d2</macAddress><networkInterfaceId>eni-3b1c170dd22ac3764</networkInterfaceId><ownerId>123456789012</ownerId><privateIpAddress>10.1.1.10</privateIpAddress><privateIpAddressesSet><item><primary>true</primary><privateIpAddress>10.1.1.10</privateIpAddress></item><item><primary>false</primary><privateIpAddress>10.1.1.100</privateIpAddress></item></privateIpAddressesSet><requesterManaged>false</requesterManaged><sourceDestCheck>false</sourceDestCheck><status>in-use</status><attachment><attachmentId>eni-attach-1</attachmentId><instanceId>i-0123456789abcdef0</instanceId><deviceIndex>0</deviceIndex><status>attached</status></attachment><subnetId>subnet-1d8bf92f488564d75</subnetId><tagSet/><vpcId>vpc-bcbec595f79012340</vpcId></item></networkInterfaceSet><requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId></DescribeNetworkInterfacesResponse>"#;

    const DESCRIBE_RTB: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<DescribeRouteTablesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><routeTableSet><item><associationSet/><routeTableId>rtb-e44d1c47048048a2b</routeTableId><routeSet><item><destinationCidrBlock>10.1.0.0/16</destinationCidrBlock><gatewayId>local</gatewayId><origin>CreateRouteTable</origin><state>active</state></item><item><destinationCidrBlock>192.168.50.0/24</destinationCidrBlock><networkInterfaceId>eni-3b1c170dd22ac3764</networkInterfaceId><origin>CreateRoute</origin><state>active</state></item><item><destinationIpv6CidrBlock>2001:db8:50::/48</destinationIpv6CidrBlock><networkInterfaceId>eni-0aaa</networkInterfaceId><origin>CreateRoute</origin><state>blackhole</state></item><item><destinationPrefixListId>pl-63a5400a</destinationPrefixListId><gatewayId>vpce-1</gatewayId><state>active</state></item></routeSet><tagSet/><vpcId>vpc-bcbec595f79012340</vpcId><ownerId>123456789012</ownerId></item></routeTableSet><requestId>request-id</requestId></DescribeRouteTablesResponse>"#;

    #[test]
    fn assign_private_ip_addresses_request() {
        let req = assign_private_ip_addresses(
            "eni-1",
            &[Ipv4Addr::new(10, 0, 1, 100), Ipv4Addr::new(10, 0, 1, 101)],
            true,
        );
        assert_eq!(
            req.body(),
            "Action=AssignPrivateIpAddresses&Version=2016-11-15&NetworkInterfaceId=eni-1\
             &PrivateIpAddress.1=10.0.1.100&PrivateIpAddress.2=10.0.1.101&AllowReassignment=true"
        );
        assert!(req.is_mutating());
    }

    #[test]
    fn unassign_and_ipv6_requests() {
        let req = unassign_private_ip_addresses("eni-1", &[Ipv4Addr::new(10, 0, 1, 100)]);
        assert_eq!(req.get("PrivateIpAddress.1"), Some("10.0.1.100"));
        let req = assign_ipv6_addresses("eni-1", &["2001:db8::5".parse().expect("v6")]);
        assert_eq!(
            req.body(),
            "Action=AssignIpv6Addresses&Version=2016-11-15&NetworkInterfaceId=eni-1&Ipv6Addresses.1=2001%3Adb8%3A%3A5"
        );
    }

    #[test]
    fn replace_route_picks_the_family_parameter_and_truncates() {
        let v4 = replace_route("rtb-1", "192.168.50.7/24".parse().expect("net"), "eni-1");
        assert_eq!(
            v4.body(),
            "Action=ReplaceRoute&Version=2016-11-15&RouteTableId=rtb-1\
             &DestinationCidrBlock=192.168.50.0%2F24&NetworkInterfaceId=eni-1"
        );
        let v6 = replace_route("rtb-1", "2001:db8:50::/48".parse().expect("net"), "eni-1");
        assert_eq!(v6.get("DestinationIpv6CidrBlock"), Some("2001:db8:50::/48"));
        assert_eq!(v6.get("DestinationCidrBlock"), None);
    }

    #[test]
    fn describe_requests_with_ids_and_filters() {
        let req = describe_network_interfaces(
            &["eni-1", "eni-2"],
            &[Filter::new("addresses.private-ip-address", "10.0.1.100")],
        );
        assert_eq!(
            req.body(),
            "Action=DescribeNetworkInterfaces&Version=2016-11-15&NetworkInterfaceId.1=eni-1\
             &NetworkInterfaceId.2=eni-2&Filter.1.Name=addresses.private-ip-address\
             &Filter.1.Value.1=10.0.1.100"
        );
        assert!(!req.is_mutating());
        let req = describe_route_tables(&["rtb-1"], &[]);
        assert_eq!(
            req.body(),
            "Action=DescribeRouteTables&Version=2016-11-15&RouteTableId.1=rtb-1"
        );
    }

    #[test]
    fn parses_describe_network_interfaces() {
        let enis = parse_describe_network_interfaces(DESCRIBE_ENI).expect("valid");
        assert_eq!(enis.len(), 1);
        let eni = &enis[0];
        assert_eq!(eni.id, "eni-3b1c170dd22ac3764");
        assert_eq!(eni.mac.as_deref(), Some("02:00:00:cc:3c:d2"));
        assert_eq!(eni.subnet_id.as_deref(), Some("subnet-1d8bf92f488564d75"));
        assert_eq!(eni.vpc_id.as_deref(), Some("vpc-bcbec595f79012340"));
        assert_eq!(eni.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(eni.source_dest_check, Some(false));
        assert_eq!(eni.primary_ip(), Some(Ipv4Addr::new(10, 1, 1, 10)));
        assert!(eni.holds("10.1.1.100".parse().expect("ip")));
        assert!(!eni.holds("10.1.1.101".parse().expect("ip")));
        assert!(eni.holds("2001:db8::5".parse().expect("ip")));
        assert_eq!(
            request_id(DESCRIBE_ENI).as_deref(),
            Some("59dbff89-35bd-4eac-99ed-be587EXAMPLE")
        );
    }

    #[test]
    fn parses_an_empty_interface_set() {
        let xml = r#"<DescribeNetworkInterfacesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><networkInterfaceSet/><requestId>r</requestId></DescribeNetworkInterfacesResponse>"#;
        assert_eq!(parse_describe_network_interfaces(xml), Ok(vec![]));
    }

    #[test]
    fn parses_describe_route_tables() {
        let tables = parse_describe_route_tables(DESCRIBE_RTB).expect("valid");
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        assert_eq!(t.id, "rtb-e44d1c47048048a2b");
        assert_eq!(t.routes.len(), 4);
        let r = t
            .route("192.168.50.0/24".parse().expect("net"))
            .expect("route");
        assert_eq!(
            r.network_interface_id.as_deref(),
            Some("eni-3b1c170dd22ac3764")
        );
        let local = t.route("10.1.0.0/16".parse().expect("net")).expect("local");
        assert_eq!(local.gateway_id.as_deref(), Some("local"));
        let v6 = t
            .route("2001:db8:50::/48".parse().expect("net"))
            .expect("v6");
        assert_eq!(v6.state.as_deref(), Some("blackhole"));
        assert_eq!(t.routes[3].destination, None);
        assert!(t.route("192.168.51.0/24".parse().expect("net")).is_none());
    }

    #[test]
    fn parses_assign_answers() {
        let xml = r#"<AssignPrivateIpAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><networkInterfaceId>eni-3b1c</networkInterfaceId><assignedPrivateIpAddressesSet><item><privateIpAddress>10.1.1.100</privateIpAddress></item></assignedPrivateIpAddressesSet><requestId>r</requestId></AssignPrivateIpAddressesResponse>"#;
        let a = parse_assign_private_ip_addresses(xml).expect("valid");
        assert_eq!(a.eni, "eni-3b1c");
        assert_eq!(a.assigned, [Ipv4Addr::new(10, 1, 1, 100)]);
        // AWS's older answer: only <return>true</return>.
        let old = r#"<AssignPrivateIpAddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><requestId>r</requestId><return>true</return></AssignPrivateIpAddressesResponse>"#;
        let old = parse_assign_private_ip_addresses(old).expect("valid");
        assert!(old.assigned.is_empty());
        let v6 = r#"<AssignIpv6AddressesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><assignedIpv6Addresses><item>2001:db8::5</item></assignedIpv6Addresses><networkInterfaceId>eni-1</networkInterfaceId><requestId>r</requestId></AssignIpv6AddressesResponse>"#;
        assert_eq!(
            parse_assign_ipv6_addresses(v6).expect("valid"),
            ["2001:db8::5".parse::<Ipv6Addr>().expect("v6")]
        );
    }

    #[test]
    fn parse_return_accepts_true_and_empty_bodies() {
        let t = r#"<ReplaceRouteResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><requestId>r</requestId><return>true</return></ReplaceRouteResponse>"#;
        assert_eq!(parse_return("ReplaceRoute", t), Ok(()));
        let empty = r#"<ReplaceRouteResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><requestId>r</requestId></ReplaceRouteResponse>"#;
        assert_eq!(parse_return("ReplaceRoute", empty), Ok(()));
        let f = t.replace(">true<", ">false<");
        assert!(parse_return("ReplaceRoute", &f).is_err());
        assert!(
            parse_return("UnassignPrivateIpAddresses", t).is_err(),
            "wrong action"
        );
    }

    #[test]
    fn wrong_or_broken_bodies_are_parse_errors() {
        assert!(parse_describe_network_interfaces("<html>").is_err());
        assert!(parse_describe_network_interfaces(DESCRIBE_RTB).is_err());
        let bad_ip = DESCRIBE_ENI.replace("10.1.1.100", "10.1.1.300");
        let err = parse_describe_network_interfaces(&bad_ip).expect_err("bad ip");
        assert!(err.what.contains("10.1.1.300"), "{err}");
    }

    #[test]
    fn parses_ec2_error_responses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>ab123c4d-5e6f-7a8b-9c0d-example</RequestID></Response>"#;
        let e = parse_error(403, xml, Some("header-id"));
        assert_eq!(e.status, 403);
        assert_eq!(e.code, "UnauthorizedOperation");
        assert_eq!(
            e.message,
            "You are not authorized to perform this operation."
        );
        assert_eq!(
            e.request_id.as_deref(),
            Some("ab123c4d-5e6f-7a8b-9c0d-example")
        );
        assert!(e.to_string().contains("UnauthorizedOperation"));
    }

    #[test]
    fn parses_other_error_spellings() {
        let xml = r#"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>req-2</RequestId></ErrorResponse>"#;
        let e = parse_error(400, xml, None);
        assert_eq!(
            (e.code.as_str(), e.request_id.as_deref()),
            ("Throttling", Some("req-2"))
        );
        // moto's auth failures: no request id in the body, one in the header.
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><ErrorResponse><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message><Type>Sender</Type></Error></Errors></ErrorResponse>"#;
        let e = parse_error(401, xml, Some("hdr-1"));
        assert_eq!(
            (e.code.as_str(), e.request_id.as_deref()),
            ("AuthFailure", Some("hdr-1"))
        );
    }

    #[test]
    fn non_aws_error_bodies_still_give_an_error() {
        let e = parse_error(503, "<html><body>Service Unavailable</body></html>", None);
        assert_eq!(e.code, "HTTP503");
        assert!(e.message.contains("Service Unavailable"));
        let e = parse_error(502, "", Some("x"));
        assert_eq!(
            (e.code.as_str(), e.request_id.as_deref()),
            ("HTTP502", Some("x"))
        );
    }
}
