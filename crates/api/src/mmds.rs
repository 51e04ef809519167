//! The metadata service's configuration (`PUT /mmds/config`, `mmds-config` in a
//! configuration file), in Firecracker's shape.

use std::net::Ipv4Addr;

/// How the guest reaches the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s (tokens optional; Firecracker deprecates it).
    #[default]
    V1,
    /// Session tokens from `PUT /latest/api/token`, required on every `GET`.
    V2,
}

/// Which NICs answer the service's address, at which address, in which version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// The version (default V1, as Firecracker's).
    #[serde(default)]
    pub version: MmdsVersion,
    /// The ids of the network interfaces whose guest frames to the service's address
    /// are the service's (they never reach the TAP).
    pub network_interfaces: Vec<String>,
    /// The service's address: link-local, 169.254.169.254 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer in IMDS's text format whatever the request's `Accept`.
    #[serde(default)]
    pub imds_compat: bool,
}

/// The service's address unless configured otherwise.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

impl MmdsConfig {
    /// The address the service answers at.
    pub fn address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4)
    }

    /// Check what needs no other configuration: at least one interface, and a
    /// link-local address that is not the network or broadcast one (169.254.1.0 to
    /// 169.254.254.255, as Firecracker takes).
    pub fn check(&self) -> Result<(), String> {
        if self.network_interfaces.is_empty() {
            return Err(
                "The list of network interface IDs that allow forwarding MMDS requests is empty."
                    .into(),
            );
        }
        let [a, b, c, _] = self.address().octets();
        if a != 169 || b != 254 || c == 0 || c == 255 {
            return Err("The MMDS IPv4 address is not link local.".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecrackers_body_and_checks_it() {
        let c: MmdsConfig = serde_json::from_str(r#"{"network_interfaces": ["eth0"]}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert_eq!(c.address(), DEFAULT_MMDS_IPV4);
        assert!(c.check().is_ok());
        let c: MmdsConfig = serde_json::from_str(
            r#"{"version": "V2", "network_interfaces": ["a", "b"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.version, c.address()),
            (MmdsVersion::V2, Ipv4Addr::new(169, 254, 170, 2))
        );
        assert!(c.imds_compat && c.check().is_ok());
        for bad in ["10.0.0.1", "169.254.0.5", "169.254.255.1"] {
            let c = MmdsConfig {
                ipv4_address: Some(bad.parse().unwrap()),
                ..c.clone()
            };
            assert!(c.check().unwrap_err().contains("link local"), "{bad}");
        }
        let c = MmdsConfig {
            network_interfaces: vec![],
            ..c
        };
        assert!(c.check().unwrap_err().contains("empty"));
        assert!(
            serde_json::from_str::<MmdsConfig>(r#"{"network_interfaces": [], "x": 1}"#).is_err()
        );
        assert!(
            serde_json::from_str::<MmdsConfig>(r#"{"version": "V3", "network_interfaces": []}"#)
                .is_err()
        );
    }
}
