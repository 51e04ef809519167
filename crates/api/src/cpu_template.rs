//! CPU templates, as Firecracker's API takes them: what each vCPU's CPUID and MSRs look
//! like to the guest, changed bit by bit from what the host's KVM offers.
//!
//! - A **custom** template ([`CustomCpuTemplate`]) is the body of `PUT /cpu-config` and
//!   the `cpu-config` section of a full configuration: `kvm_capabilities` ("171" adds a
//!   capability KVM must have, "!171" drops one from the checks), `cpuid_modifiers`
//!   (leaf, subleaf, KVM flags, and a bitmap per register) and `msr_modifiers` (an MSR's
//!   address and a 64-bit bitmap). A bitmap is a string `0b` followed by `0`, `1` or `x`
//!   per bit, most significant first: `0` clears the bit, `1` sets it, `x` keeps what
//!   the host has; `_` separates groups, and a short bitmap is padded with `x` on the
//!   left. The aarch64 parts of Firecracker's schema (`vcpu_features`, `reg_modifiers`)
//!   are refused by name: Vireo runs x86_64 guests.
//! - A **static** template ([`StaticCpuTemplate`]) is one of Firecracker's built-in
//!   templates named in `machine-config`'s (deprecated) `cpu_template`; the VMM holds
//!   what each one changes and on which host CPUs it may be used.
//!
//! Parsing checks the form; whether the host's KVM has the leaves and MSRs a template
//! changes is the VMM's to find out when the VM is built.

use serde::{Deserialize, Serialize};

/// KVM's CPUID entry flags a template may set: `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (1),
/// `KVM_CPUID_FLAG_STATEFUL_FUNC` (2), `KVM_CPUID_FLAG_STATE_READ_NEXT` (4).
pub const KVM_CPUID_FLAGS: u32 = 0b111;
/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the subleaf matters for this leaf.
pub const KVM_CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// A KVM capability in a template's `kvm_capabilities`: `"N"` adds capability N to the
/// ones KVM must have for the VM to start, `"!N"` takes it out of those checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KvmCapability {
    /// KVM must have it.
    Check(u32),
    /// Not checked (even if the VMM would otherwise require it).
    Uncheck(u32),
}

impl TryFrom<String> for KvmCapability {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (uncheck, digits) = match s.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let number = digits
            .parse::<u32>()
            .ok()
            .filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "invalid KVM capability '{s}': a decimal capability number, with '!' \
                     in front to take it out of the checks (\"171\", \"!171\")"
                )
            })?;
        Ok(if uncheck {
            Self::Uncheck(number)
        } else {
            Self::Check(number)
        })
    }
}

impl From<KvmCapability> for String {
    fn from(c: KvmCapability) -> String {
        match c {
            KvmCapability::Check(n) => n.to_string(),
            KvmCapability::Uncheck(n) => format!("!{n}"),
        }
    }
}

/// A register of `WIDTH` bits as a template changes it: the bits in `mask` become those
/// of `value`, the others keep the host's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BitFilter<const WIDTH: u32> {
    /// The bits the template decides (`0` or `1` in the bitmap).
    pub mask: u64,
    /// What those bits become (only bits inside `mask` are set).
    pub value: u64,
}

/// A CPUID register's bitmap (32 characters at most).
pub type Bitmap32 = BitFilter<32>;
/// An MSR's bitmap (64 characters at most).
pub type Bitmap64 = BitFilter<64>;

impl<const WIDTH: u32> BitFilter<WIDTH> {
    /// `host` with the template's bits applied.
    pub fn apply(&self, host: u64) -> u64 {
        (host & !self.mask) | (self.value & self.mask)
    }

    /// The filter that clears `clear`, then sets `set` (`set` wins where both are given).
    pub fn clear_then_set(clear: u64, set: u64) -> Self {
        Self {
            mask: clear | set,
            value: set,
        }
    }

    /// Whether it changes nothing (every bit `x`).
    pub fn is_identity(&self) -> bool {
        self.mask == 0
    }
}

impl<const WIDTH: u32> std::str::FromStr for BitFilter<WIDTH> {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let mut filter = Self::default();
        let mut bit = 0u32;
        // Least significant bit last: read from the end.
        for c in digits.chars().rev() {
            let set = match c {
                '_' => continue,
                'x' => None,
                '0' => Some(false),
                '1' => Some(true),
                other => {
                    return Err(format!(
                        "invalid bitmap '{text}': '{other}' is not 0, 1, x or _ \
                         (a bitmap is \"0b\" then one of those per bit)"
                    ));
                }
            };
            if bit == WIDTH {
                return Err(format!(
                    "invalid bitmap '{text}': more than {WIDTH} bits for a {WIDTH}-bit register"
                ));
            }
            if let Some(one) = set {
                filter.mask |= 1 << bit;
                if one {
                    filter.value |= 1 << bit;
                }
            }
            bit += 1;
        }
        Ok(filter)
    }
}

impl<const WIDTH: u32> TryFrom<String> for BitFilter<WIDTH> {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl<const WIDTH: u32> From<BitFilter<WIDTH>> for String {
    fn from(f: BitFilter<WIDTH>) -> String {
        let mut s = String::with_capacity(WIDTH as usize + 2);
        s.push_str("0b");
        for bit in (0..WIDTH).rev() {
            s.push(match ((f.mask >> bit) & 1, (f.value >> bit) & 1) {
                (0, _) => 'x',
                (_, 0) => '0',
                _ => '1',
            });
        }
        s
    }
}

/// A number written as a string: `0x` hexadecimal, `0b` binary or plain decimal; written
/// back in hexadecimal.
mod number {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(text: &str) -> Result<u32, String> {
        let clean: String = text.chars().filter(|&c| c != '_').collect();
        let parsed = if let Some(hex) = clean.strip_prefix("0x") {
            u32::from_str_radix(hex, 16)
        } else if let Some(bin) = clean.strip_prefix("0b") {
            u32::from_str_radix(bin, 2)
        } else {
            clean.parse::<u32>()
        };
        parsed.map_err(|e| {
            format!("invalid number '{text}' ({e}): a 32-bit \"0x...\", \"0b...\" or decimal")
        })
    }

    pub fn serialize<S: Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{n:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One register of a CPUID leaf and what to do to its bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register.
    pub register: CpuidRegister,
    /// Its bitmap.
    pub bitmap: Bitmap32,
}

/// The changes to one CPUID leaf and subleaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// The leaf (EAX given to CPUID).
    #[serde(with = "number")]
    pub leaf: u32,
    /// The subleaf (ECX); 0 for leaves without subleaves.
    #[serde(with = "number")]
    pub subleaf: u32,
    /// KVM's flags for this entry, which replace KVM's own (1: the subleaf is
    /// significant, as for leaves 4, 7, 0xb, 0xd...).
    pub flags: u32,
    /// The registers changed, in order (a register may appear more than once).
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// The change to one MSR's initial value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// The MSR's address.
    #[serde(with = "number")]
    pub addr: u32,
    /// Its bitmap.
    pub bitmap: Bitmap64,
}

/// Firecracker's custom CPU template (`PUT /cpu-config`, `cpu-config`), x86_64 form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomCpuTemplate {
    /// Capabilities KVM must have, or need not have.
    #[serde(default)]
    pub kvm_capabilities: Vec<KvmCapability>,
    /// CPUID changes, applied in order to KVM's supported CPUID before Vireo's own
    /// per-vCPU normalisation (which wins where both touch a bit).
    #[serde(default)]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR changes, applied in order to the value KVM gives each MSR once the vCPU has
    /// its CPUID; the boot MSRs Vireo sets are set afterwards and win.
    #[serde(default)]
    pub msr_modifiers: Vec<MsrModifier>,
    /// aarch64 only: refused by [`CustomCpuTemplate::validate`] when it asks for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_features: Option<serde_json::Value>,
    /// aarch64 only: refused by [`CustomCpuTemplate::validate`] when it asks for anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_modifiers: Option<serde_json::Value>,
}

impl CustomCpuTemplate {
    /// Refuse what parses but cannot apply on x86_64: aarch64's `vcpu_features` and
    /// `reg_modifiers` (unless empty), and CPUID flags KVM does not define.
    pub fn validate(&self) -> Result<(), String> {
        let asks = |v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        for (field, value) in [
            ("vcpu_features", &self.vcpu_features),
            ("reg_modifiers", &self.reg_modifiers),
        ] {
            if asks(value) {
                return Err(format!(
                    "{field} is for aarch64 hosts (ARM vCPU features and registers); \
                     Vireo runs x86_64 guests: use cpuid_modifiers and msr_modifiers."
                ));
            }
        }
        if let Some(m) = self
            .cpuid_modifiers
            .iter()
            .find(|m| m.flags & !KVM_CPUID_FLAGS != 0)
        {
            return Err(format!(
                "leaf {:#x} subleaf {:#x}: flags {} has bits KVM does not define (1 significant \
                 index, 2 stateful, 4 read next).",
                m.leaf, m.subleaf, m.flags
            ));
        }
        Ok(())
    }

    /// The same template without the (empty) aarch64 fields, as it is shown and stored.
    pub fn normalized(mut self) -> Self {
        self.vcpu_features = None;
        self.reg_modifiers = None;
        self
    }

    /// Whether it changes nothing and checks nothing.
    pub fn is_empty(&self) -> bool {
        self.kvm_capabilities.is_empty()
            && self.cpuid_modifiers.is_empty()
            && self.msr_modifiers.is_empty()
    }
}

/// Firecracker's built-in x86_64 CPU templates (`cpu_template` in `machine-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StaticCpuTemplate {
    /// Close to an AWS C3 instance (Intel Ivy Bridge): Intel Skylake, Cascade Lake,
    /// Ice Lake hosts.
    C3,
    /// Close to an AWS T2 instance (Intel Haswell): Intel Skylake, Cascade Lake, Ice Lake.
    T2,
    /// T2, and the vulnerability bits of IA32_ARCH_CAPABILITIES fixed, so snapshots move
    /// between Intel Skylake and Cascade Lake hosts.
    T2S,
    /// Intel Cascade Lake's instruction sets (Cascade Lake and Ice Lake hosts), on a par
    /// with T2A.
    T2CL,
    /// The same instruction sets on AMD Milan hosts.
    T2A,
}

impl StaticCpuTemplate {
    /// Every one, in Firecracker's order.
    pub const ALL: [Self; 5] = [Self::C3, Self::T2, Self::T2S, Self::T2CL, Self::T2A];

    /// Its name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::C3 => "C3",
            Self::T2 => "T2",
            Self::T2S => "T2S",
            Self::T2CL => "T2CL",
            Self::T2A => "T2A",
        }
    }

    /// The template `cpu_template` names: `None` for `"None"`; an error naming the
    /// templates for anything else (aarch64's `V1N1` by name).
    pub fn parse(name: &str) -> Result<Option<Self>, String> {
        if name == "None" {
            return Ok(None);
        }
        if name == "V1N1" {
            return Err(
                "CPU template V1N1 is for aarch64 hosts (Neoverse V1 as N1); Vireo runs \
                 x86_64 guests."
                    .into(),
            );
        }
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .map(Some)
            .ok_or_else(|| {
                format!("unknown CPU template '{name}': C3, T2, T2S, T2CL, T2A or None.")
            })
    }
}

impl std::fmt::Display for StaticCpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The template a VM's vCPUs are built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// A built-in one, by name.
    Static(StaticCpuTemplate),
    /// One given whole.
    Custom(CustomCpuTemplate),
}

impl CpuTemplate {
    /// The KVM capability changes it asks for (none for the static templates).
    pub fn kvm_capabilities(&self) -> &[KvmCapability] {
        match self {
            Self::Static(_) => &[],
            Self::Custom(t) => &t.kvm_capabilities,
        }
    }
}

/// Firecracker's `cpu-config` in a configuration file may be the path of a JSON file
/// holding the template: the file's text in its place. Anything else is left as it is.
pub fn inline_template_file(
    config: &mut serde_json::Value,
    read: impl FnOnce(&str) -> std::io::Result<String>,
) -> Result<(), String> {
    let Some(slot) = config.get_mut("cpu-config") else {
        return Ok(());
    };
    let Some(path) = slot.as_str().map(str::to_string) else {
        return Ok(());
    };
    let text = read(&path).map_err(|e| format!("cpu-config: cannot read {path}: {e}"))?;
    *slot = serde_json::from_str(&text).map_err(|e| format!("cpu-config: {path}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_keep_x_bits_and_force_the_others() {
        let f: Bitmap32 = "0bxxxx_xx10".parse().unwrap();
        assert_eq!((f.mask, f.value), (0b11, 0b10));
        // x keeps the host's bit, 1 sets, 0 clears.
        assert_eq!(f.apply(0b1111_0101), 0b1111_0110);
        assert_eq!(f.apply(0), 0b10);
        // The example of Firecracker's documentation: leaf 1 EAX.
        let f: Bitmap32 = "0bxxxx000000000011xx00011011110010".parse().unwrap();
        assert_eq!(f.mask, 0x0fff_3fff);
        assert_eq!(f.value, 0x0003_06f2);
        assert_eq!(f.apply(0xffff_ffff), 0xf003_c6f2);
        // Short bitmaps are padded with x; no prefix is taken too.
        let f: Bitmap64 = "1".parse().unwrap();
        assert_eq!((f.mask, f.value), (1, 1));
        let all: Bitmap64 = format!("0b{}", "0".repeat(64)).parse().unwrap();
        assert_eq!((all.mask, all.value), (u64::MAX, 0));
        assert_eq!(all.apply(u64::MAX), 0);
        let top: Bitmap64 = format!("0b1{}", "x".repeat(63)).parse().unwrap();
        assert_eq!(top.apply(0), 1 << 63);
        assert!("0b".parse::<Bitmap32>().unwrap().is_identity());
    }

    #[test]
    fn bad_bitmaps_say_why() {
        let err = "0b10x2".parse::<Bitmap32>().unwrap_err();
        assert!(err.contains("'2' is not 0, 1, x or _"), "{err}");
        let err = format!("0b{}", "x".repeat(33))
            .parse::<Bitmap32>()
            .unwrap_err();
        assert!(err.contains("more than 32 bits"), "{err}");
        // Underscores do not count as bits.
        assert!(format!("0b{}_", "x".repeat(32)).parse::<Bitmap32>().is_ok());
        let err = "0bX".parse::<Bitmap32>().unwrap_err();
        assert!(err.contains("'X'"), "{err}");
    }

    #[test]
    fn bitmaps_are_written_back_whole() {
        let f: Bitmap32 = "0b1_0xx".parse().unwrap();
        let s = String::from(f);
        assert_eq!(s, format!("0b{}10xx", "x".repeat(28)));
        assert_eq!(s.parse::<Bitmap32>().unwrap(), f);
        assert_eq!(
            String::from(Bitmap64::clear_then_set(0xff, 0x0f)),
            format!("0b{}00001111", "x".repeat(56))
        );
    }

    #[test]
    fn kvm_capabilities_parse_with_and_without_bang() {
        let caps: Vec<KvmCapability> = serde_json::from_str(r#"["171", "!56"]"#).unwrap();
        assert_eq!(
            caps,
            [KvmCapability::Check(171), KvmCapability::Uncheck(56)]
        );
        assert_eq!(serde_json::to_string(&caps).unwrap(), r#"["171","!56"]"#);
        for bad in [r#""""#, r#""!""#, r#""0x10""#, r#""-1""#, r#""!!3""#, "17"] {
            let err = serde_json::from_str::<KvmCapability>(bad).unwrap_err();
            assert!(
                bad == "17" || err.to_string().contains("invalid KVM capability"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn firecrackers_example_template_parses_and_round_trips() {
        let text = r#"{
            "kvm_capabilities": ["!56"],
            "cpuid_modifiers": [{
                "leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]
            }],
            "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000000000000000"}]
        }"#;
        let t: CustomCpuTemplate = serde_json::from_str(text).unwrap();
        t.validate().unwrap();
        assert_eq!(t.kvm_capabilities, [KvmCapability::Uncheck(56)]);
        let leaf = &t.cpuid_modifiers[0];
        assert_eq!((leaf.leaf, leaf.subleaf, leaf.flags), (1, 0, 0));
        assert_eq!(leaf.modifiers[0].register, CpuidRegister::Eax);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        assert_eq!(t.msr_modifiers[0].bitmap.mask, u64::MAX);
        let again: CustomCpuTemplate =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(again, t);
        // Numbers in the three notations.
        let t: CustomCpuTemplate = serde_json::from_str(
            r#"{"cpuid_modifiers": [{"leaf": "7", "subleaf": "0b1", "flags": 1, "modifiers": []}],
                "msr_modifiers": [{"addr": "0xc000_0080", "bitmap": "0b1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (t.cpuid_modifiers[0].leaf, t.cpuid_modifiers[0].subleaf),
            (7, 1)
        );
        assert_eq!(t.msr_modifiers[0].addr, 0xc000_0080);
    }

    #[test]
    fn malformed_templates_are_refused_by_name() {
        for (text, says) in [
            (
                r#"{"cpuid_modifier": []}"#,
                "unknown field `cpuid_modifier`",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "modifiers": []}]}"#,
                "missing field `flags`",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "one", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
                "invalid number 'one'",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x1ffffffff", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
                "invalid number",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": [{"register": "rax", "bitmap": "0b1"}]}]}"#,
                "unknown variant `rax`",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0b12"}]}]}"#,
                "'2' is not 0, 1, x or _",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1", "value": 3}]}"#,
                "unknown field `value`",
            ),
            (
                r#"{"kvm_capabilities": ["KVM_CAP_XCRS"]}"#,
                "invalid KVM capability",
            ),
        ] {
            let err = serde_json::from_str::<CustomCpuTemplate>(text).unwrap_err();
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn aarch64_parts_and_unknown_flags_are_refused() {
        let arm: CustomCpuTemplate =
            serde_json::from_str(r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1100000"}]}"#)
                .unwrap();
        let err = arm.validate().unwrap_err();
        assert!(
            err.starts_with("vcpu_features is for aarch64 hosts"),
            "{err}"
        );
        let arm: CustomCpuTemplate = serde_json::from_str(
            r#"{"reg_modifiers": [{"addr": "0x603000000013c020", "bitmap": "0b1"}]}"#,
        )
        .unwrap();
        assert!(arm.validate().unwrap_err().starts_with("reg_modifiers"));
        // Empty aarch64 lists ask for nothing; they are dropped.
        let empty: CustomCpuTemplate =
            serde_json::from_str(r#"{"vcpu_features": [], "reg_modifiers": null}"#).unwrap();
        empty.validate().unwrap();
        assert_eq!(empty.normalized(), CustomCpuTemplate::default());
        let flags: CustomCpuTemplate = serde_json::from_str(
            r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0", "flags": 9, "modifiers": []}]}"#,
        )
        .unwrap();
        assert!(flags.validate().unwrap_err().contains("flags 9"));
    }

    #[test]
    fn static_templates_by_name() {
        assert_eq!(StaticCpuTemplate::parse("None"), Ok(None));
        for t in StaticCpuTemplate::ALL {
            assert_eq!(StaticCpuTemplate::parse(t.name()), Ok(Some(t)));
        }
        assert!(
            StaticCpuTemplate::parse("V1N1")
                .unwrap_err()
                .contains("aarch64")
        );
        let err = StaticCpuTemplate::parse("t2").unwrap_err();
        assert!(err.contains("unknown CPU template 't2'"), "{err}");
    }

    #[test]
    fn a_template_file_named_in_a_config_is_read_in_its_place() {
        let mut config = serde_json::json!({"cpu-config": "/etc/t.json", "x": 1});
        inline_template_file(&mut config, |path| {
            assert_eq!(path, "/etc/t.json");
            Ok(r#"{"kvm_capabilities": ["171"]}"#.into())
        })
        .unwrap();
        assert_eq!(config["cpu-config"]["kvm_capabilities"][0], "171");
        // An inline template, or none, is left alone (the reader is not called).
        let mut inline = serde_json::json!({"cpu-config": {}});
        inline_template_file(&mut inline, |_| unreachable!()).unwrap();
        assert_eq!(inline["cpu-config"], serde_json::json!({}));
        let mut missing = serde_json::json!({"cpu-config": "/nope.json"});
        let err = inline_template_file(&mut missing, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .unwrap_err();
        assert!(
            err.starts_with("cpu-config: cannot read /nope.json"),
            "{err}"
        );
        let mut bad = serde_json::json!({"cpu-config": "/bad.json"});
        let err = inline_template_file(&mut bad, |_| Ok("{".into())).unwrap_err();
        assert!(err.starts_with("cpu-config: /bad.json: "), "{err}");
    }
}
