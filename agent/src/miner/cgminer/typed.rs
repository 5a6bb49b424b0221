//! Typed reads of cgminer-style replies: only the fields a [`Reading`](crate::miner::Reading)
//! uses, with strings borrowed from the reply buffer, and everything else skipped without being
//! built. This is the poll's hot path: a `serde_json::Value` tree of a LuxOS reply is several
//! hundred map inserts and strings, of which a reading keeps a dozen numbers.
//!
//! Valid JSON is read straight from the bytes. What serde_json refuses (the malformed replies
//! real firmwares send, see [`parse`](super::parse)) goes through the tolerant parser into a
//! `Value` first and is then read by the same types, so both paths give the same answer
//! (`typed_and_tolerant_paths_agree`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::parse::{ParseError, parse_reply, until_nul};

/// A number as firmwares send it: a JSON number or a numeric string. Anything else, and
/// non-finite values, read as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Num(pub Option<f64>);

impl Num {
    pub fn get(self) -> Option<f64> {
        self.0
    }
}

struct NumVisitor;

impl<'de> Visitor<'de> for NumVisitor {
    type Value = Num;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a numeric string")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
        Ok(Num(Some(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
        Ok(Num(Some(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
        Ok(Num(v.is_finite().then_some(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Num, E> {
        Ok(Num(v.trim().parse::<f64>().ok().filter(|f| f.is_finite())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Num, E> {
        Ok(Num(None))
    }
    fn visit_unit<E>(self) -> Result<Num, E> {
        Ok(Num(None))
    }
    fn visit_none<E>(self) -> Result<Num, E> {
        Ok(Num(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Num, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Num(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Num(None))
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

/// Text as firmwares send it: a string (borrowed when it has no escapes), or a number rendered;
/// empty strings and anything else read as absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    pub fn owned(&self) -> Option<String> {
        self.as_str().map(str::to_owned)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Owned(v.to_string()))))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Text<'de>, E> {
        Ok(Text(Some(Cow::Borrowed(if v { "true" } else { "false" }))))
    }
    fn visit_unit<E>(self) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }
    fn visit_none<E>(self) -> Result<Text<'de>, E> {
        Ok(Text(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

/// A flag as firmwares send it: a JSON boolean, or `"true"`/`"false"` in any case.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Flag(pub Option<bool>);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        let t = Text::deserialize(d)?;
        Ok(Flag(match t.as_str() {
            Some(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Some(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }))
    }
}

/// The STATUS of a reply: cgminer's one-element array (`[{"STATUS":"S","Code":11,..}]`) or
/// Whatsminer's flat letter (`"STATUS":"S"` with `Code` and `Msg` beside it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusField<'a> {
    pub letter: Text<'a>,
    pub code: Num,
    pub msg: Text<'a>,
}

#[derive(Deserialize)]
struct StatusRow<'a> {
    #[serde(rename = "STATUS", default, borrow)]
    letter: Text<'a>,
    #[serde(rename = "Code", default)]
    code: Num,
    #[serde(rename = "Msg", default, borrow)]
    msg: Text<'a>,
}

struct StatusVisitor;

impl<'de> Visitor<'de> for StatusVisitor {
    type Value = StatusField<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a STATUS array or letter")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first: Option<StatusRow<'de>> = seq.next_element()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(first.map_or_else(StatusField::default, |r| StatusField {
            letter: r.letter,
            code: r.code,
            msg: r.msg,
        }))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(StatusField {
            letter: Text(Some(Cow::Borrowed(v))),
            ..StatusField::default()
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StatusField {
            letter: Text(Some(Cow::Owned(v.to_owned()))),
            ..StatusField::default()
        })
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(StatusField {
            letter: Text(Some(Cow::Owned(v))),
            ..StatusField::default()
        })
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(StatusField::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(StatusField::default())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StatusField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StatusField<'a>, D::Error> {
        d.deserialize_any(StatusVisitor)
    }
}

/// The hashrate keys cgminer-family firmwares use: window first (5 s, 1 m, 30 s, average), then
/// unit (TH/s, GH/s, MH/s, kH/s), with the factor to TH/s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Hashrates([Num; 16]);

pub(crate) const HASHRATE_KEYS: [(&str, f64); 16] = [
    ("THS 5s", 1.0),
    ("GHS 5s", 1e-3),
    ("MHS 5s", 1e-6),
    ("KHS 5s", 1e-9),
    ("THS 1m", 1.0),
    ("GHS 1m", 1e-3),
    ("MHS 1m", 1e-6),
    ("KHS 1m", 1e-9),
    ("THS 30s", 1.0),
    ("GHS 30s", 1e-3),
    ("MHS 30s", 1e-6),
    ("KHS 30s", 1e-9),
    ("THS av", 1.0),
    ("GHS av", 1e-3),
    ("MHS av", 1e-6),
    ("KHS av", 1e-9),
];

impl Hashrates {
    /// Takes `value` if `key` is one of the hashrate keys; false otherwise.
    fn offer<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match HASHRATE_KEYS.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.0[i] = map.next_value()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The hashrate in TH/s from the first key present, in the order of [`HASHRATE_KEYS`].
    pub fn ths(&self) -> Option<f64> {
        self.0
            .iter()
            .zip(HASHRATE_KEYS)
            .find_map(|(n, (_, scale))| n.get().map(|v| v * scale))
    }
}

/// A map key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'a>, D::Error> {
        let t: Text<'a> = Text::deserialize(d)?;
        Ok(Key(t.0.unwrap_or(Cow::Borrowed(""))))
    }
}

/// A row with hashrate keys and other fields: the visitor hands hashrate keys to
/// [`Hashrates`] and every other key to `field`.
macro_rules! row_with_hashrates {
    ($name:ident<$lt:lifetime> { $($field:ident : $ty:ty = [$($key:literal),+]),* $(,)? }) => {
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name<$lt> {
            pub hashrate: Hashrates,
            $(pub $field: $ty,)*
            _borrow: std::marker::PhantomData<&$lt ()>,
        }

        impl<'de: $lt, $lt> Deserialize<'de> for $name<$lt> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V<$lt>(std::marker::PhantomData<&$lt ()>);
                impl<'de: $lt, $lt> Visitor<'de> for V<$lt> {
                    type Value = $name<$lt>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(stringify!($name))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut out = $name::default();
                        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                            if out.hashrate.offer(&key, &mut map)? {
                                continue;
                            }
                            match key.as_ref() {
                                $($($key)|+ => {
                                    let v: $ty = map.next_value()?;
                                    if out.$field == <$ty>::default() {
                                        out.$field = v;
                                    }
                                })*
                                _ => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V(std::marker::PhantomData))
            }
        }
    };
}

row_with_hashrates!(SummaryRow<'a> {
    elapsed: Num = ["Elapsed"],
    uptime: Num = ["Uptime"],
    power: Num = ["Power"],
    power_limit: Num = ["Power Limit"],
    fan_in: Num = ["Fan Speed In"],
    fan_out: Num = ["Fan Speed Out"],
    error_code: Errors = ["Error Code", "error_code"],
});

row_with_hashrates!(DevRow<'a> {
    asc: Num = ["ASC"],
    slot: Num = ["Slot"],
    id: Num = ["ID"],
    chip_temp_avg: Num = ["Chip Temp Avg"],
    temperature: Num = ["Temperature"],
    temp: Num = ["Temp"],
});

/// Errors a miner reports in its summary (`Error Code`: a list, or an object of code → text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Errors(pub Vec<String>);

impl<'de> Deserialize<'de> for Errors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Errors, D::Error> {
        // Rare and small: read it as a Value and render it as the Value-based reader did.
        let v = Value::deserialize(d)?;
        let render = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(Errors(match &v {
            Value::Array(errs) => errs.iter().map(render).collect(),
            Value::Object(errs) => errs
                .iter()
                .map(|(k, v)| format!("{k}: {}", render(v)))
                .collect(),
            _ => Vec::new(),
        }))
    }
}

/// Highest chains and fans a bmminer-style `stats` entry is read for.
pub const MAX_CHAINS: usize = 16;

/// A bmminer-style `stats` entry: per-chain hashrate (`chain_rateN`, GH/s) and temperatures
/// (`temp_chipN`, else `temp2_N`, else `tempN`; dash-separated lists read as their highest),
/// fans (`fanN`), and the few scalar keys readings use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsRow<'a> {
    pub chain_rate: [Num; MAX_CHAINS],
    /// `chain_acnN`: the ASICs the chain answered with (0 for an empty slot).
    pub chain_acn: [Num; MAX_CHAINS],
    /// By priority: temp_chipN, temp2_N, tempN.
    pub chain_temp: [[Option<f64>; 3]; MAX_CHAINS],
    pub fan: [Num; MAX_CHAINS],
    pub elapsed: Num,
    pub model: Text<'a>,
    /// `chain_power`, `Power`, `power`, `total_power` (Hiveon's builds, a number of watts):
    /// text such as "3250 W" or a number.
    pub power: [Text<'a>; 4],
}

/// `temp_chip1` is a number or a dash-separated list (`"60-62-75-77"`): its highest.
struct Temp(Option<f64>);

impl<'de> Deserialize<'de> for Temp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Temp, D::Error> {
        let t: Text<'_> = Text::deserialize(d)?;
        Ok(Temp(t.as_str().and_then(|s| {
            s.parse::<f64>().ok().filter(|f| f.is_finite()).or_else(|| {
                s.split('-')
                    .filter_map(|p| p.trim().parse::<f64>().ok())
                    .filter(|f| f.is_finite())
                    .reduce(f64::max)
            })
        })))
    }
}

/// `prefix` followed by a chain number 1..=MAX_CHAINS: its index.
fn chain_index(key: &str, prefix: &str) -> Option<usize> {
    let n: usize = key.strip_prefix(prefix)?.parse().ok()?;
    (1..=MAX_CHAINS).contains(&n).then(|| n - 1)
}

impl<'de: 'a, 'a> Deserialize<'de> for StatsRow<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StatsRow<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a STATS entry")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = StatsRow::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let k = key.as_ref();
                    if let Some(i) = chain_index(k, "chain_rate") {
                        out.chain_rate[i] = map.next_value()?;
                    } else if let Some(i) = chain_index(k, "chain_acn") {
                        out.chain_acn[i] = map.next_value()?;
                    } else if let Some(i) = chain_index(k, "temp_chip") {
                        out.chain_temp[i][0] = map.next_value::<Temp>()?.0;
                    } else if let Some(i) = chain_index(k, "temp2_") {
                        out.chain_temp[i][1] = map.next_value::<Temp>()?.0;
                    } else if let Some(i) = chain_index(k, "temp") {
                        out.chain_temp[i][2] = map.next_value::<Temp>()?.0;
                    } else if let Some(i) = chain_index(k, "fan") {
                        out.fan[i] = map.next_value()?;
                    } else {
                        match k {
                            "Elapsed" => out.elapsed = map.next_value()?,
                            "Type" => out.model = map.next_value()?,
                            "chain_power" => out.power[0] = map.next_value()?,
                            "Power" => out.power[1] = map.next_value()?,
                            "power" => out.power[2] = map.next_value()?,
                            "total_power" => out.power[3] = map.next_value()?,
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One pool.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PoolRow<'a> {
    #[serde(rename = "URL", alias = "Url", alias = "url", default, borrow)]
    pub url: Text<'a>,
    #[serde(rename = "Status", default, borrow)]
    pub status: Text<'a>,
    #[serde(rename = "Priority", default)]
    pub priority: Num,
    #[serde(rename = "Stratum Active", default)]
    pub stratum_active: Flag,
}

/// One FANS entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FanRow {
    #[serde(rename = "ID", default)]
    pub id: Num,
    #[serde(rename = "RPM", default)]
    pub rpm: Num,
    #[serde(rename = "Speed", default)]
    pub speed: Num,
}

/// LuxOS `power`: `Watts`, a number or "3250 W".
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct PowerRow<'a> {
    #[serde(rename = "Watts", default, borrow)]
    pub watts: Text<'a>,
}

/// LuxOS `config`: the active profile and how curtailment shows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ConfigRow<'a> {
    #[serde(rename = "Profile", default, borrow)]
    pub profile: Text<'a>,
    #[serde(rename = "Model", default, borrow)]
    pub model: Text<'a>,
    #[serde(
        rename = "IsSleeping",
        alias = "Sleeping",
        alias = "Curtailed",
        default
    )]
    pub sleeping: Flag,
    #[serde(rename = "CurtailMode", alias = "Curtail", default, borrow)]
    pub curtail_mode: Text<'a>,
}

/// LuxOS `profiles`: name and watts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProfileRow<'a> {
    #[serde(
        rename = "Profile Name",
        alias = "Name",
        alias = "Profile",
        default,
        borrow
    )]
    pub name: Text<'a>,
    #[serde(rename = "Watts", alias = "Power", default)]
    pub watts: Num,
}

/// `version`: the model (`Type`, older `Model`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct VersionRow<'a> {
    #[serde(rename = "Type", alias = "Model", default, borrow)]
    pub model: Text<'a>,
}

/// `devdetails`: the model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DevDetailRow<'a> {
    #[serde(rename = "Model", default, borrow)]
    pub model: Text<'a>,
}

/// Whatsminer's flat `Msg` object (`status`: `mineroff`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsgField<'a> {
    pub mineroff: Text<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for MsgField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MsgField<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Msg object or text")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = MsgField::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    match key.as_ref() {
                        "mineroff" | "btmineroff" if out.mineroff.as_str().is_none() => {
                            out.mineroff = map.next_value()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MsgField::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MsgField::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MsgField::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MsgField::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MsgField::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MsgField::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One command's reply, with every section a reading uses (absent ones empty).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Reply<'a> {
    #[serde(rename = "STATUS", borrow)]
    pub status: StatusField<'a>,
    /// Whatsminer's flat form puts `Code` and `Msg` beside the letter.
    #[serde(rename = "Code")]
    pub code: Num,
    #[serde(rename = "Msg", borrow)]
    pub msg: MsgField<'a>,
    #[serde(rename = "SUMMARY", borrow)]
    pub summary: Vec<SummaryRow<'a>>,
    #[serde(rename = "STATS", borrow)]
    pub stats: Vec<StatsRow<'a>>,
    #[serde(rename = "POOLS", borrow)]
    pub pools: Vec<PoolRow<'a>>,
    #[serde(rename = "DEVS", borrow)]
    pub devs: Vec<DevRow<'a>>,
    #[serde(rename = "FANS")]
    pub fans: Vec<FanRow>,
    #[serde(rename = "POWER", borrow)]
    pub power: Vec<PowerRow<'a>>,
    #[serde(rename = "CONFIG", borrow)]
    pub config: Vec<ConfigRow<'a>>,
    #[serde(rename = "PROFILES", borrow)]
    pub profiles: Vec<ProfileRow<'a>>,
    #[serde(rename = "VERSION", borrow)]
    pub version: Vec<VersionRow<'a>>,
    #[serde(rename = "DEVDETAILS", borrow)]
    pub devdetails: Vec<DevDetailRow<'a>>,
}

impl Reply<'_> {
    /// S (success) and I (informational) are successes; anything else, or no STATUS, is not.
    pub fn is_success(&self) -> bool {
        matches!(self.status.letter.as_str(), Some("S" | "I"))
    }
}

/// A multi-command reply keyed by command: each command's reply wrapped in a one-element
/// array (cgminer's API-README), or bare.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Multi<'a> {
    replies: Vec<(Cow<'a, str>, Reply<'a>)>,
}

impl<'a> Multi<'a> {
    /// The reply to `command`, when it came and succeeded.
    pub fn get(&self, command: &str) -> Option<&Reply<'a>> {
        self.replies
            .iter()
            .find(|(c, r)| c == command && r.is_success())
            .map(|(_, r)| r)
    }

    /// Adds the reply to one command (read on its own, when the firmware refuses `a+b`).
    pub fn insert(&mut self, command: &'a str, reply: Reply<'a>) {
        self.replies.push((Cow::Borrowed(command), reply));
    }

    /// Whether any command's reply succeeded.
    pub fn any_success(&self) -> bool {
        self.replies.iter().any(|(_, r)| r.is_success())
    }
}

/// The first element of an array, or the value itself when it is not one.
struct First<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reply or a one-element array of it")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| First(Some(t)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(First(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Reads the replies to `commands` out of a multi-command reply; other keys (`id`, a top-level
/// STATUS when the firmware refused the whole request) are skipped.
struct MultiSeed<'c> {
    commands: &'c [&'c str],
}

impl<'de, 'c> de::DeserializeSeed<'de> for MultiSeed<'c> {
    type Value = Multi<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Multi<'de>, D::Error> {
        struct V<'c>(&'c [&'c str]);
        impl<'de, 'c> Visitor<'de> for V<'c> {
            type Value = Multi<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a multi-command reply")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Multi<'de>, A::Error> {
                let mut out = Multi::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if self.0.contains(&key.as_ref()) {
                        if let First(Some(reply)) = map.next_value::<First<Reply<'de>>>()? {
                            out.replies.push((key, reply));
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V(self.commands))
    }
}

/// Reads a multi-command reply's `commands`: straight from the bytes when they are valid JSON,
/// else through the tolerant parser's `Value`, read by the same types.
///
/// # Errors
/// [`ParseError`] when nothing readable came back.
pub fn multi<'a>(bytes: &'a [u8], commands: &[&str]) -> Result<Multi<'a>, ParseError> {
    use serde::de::DeserializeSeed;
    let body = until_nul(bytes);
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(m) = (MultiSeed { commands }).deserialize(&mut de)
        && de.end().is_ok()
    {
        return Ok(m);
    }
    let value = parse_reply(bytes)?;
    Ok((MultiSeed { commands })
        .deserialize(value)
        .unwrap_or_default())
}

/// Reads one command's reply the same two ways.
///
/// # Errors
/// [`ParseError`] when nothing readable came back.
pub fn single(bytes: &[u8]) -> Result<Reply<'_>, ParseError> {
    let body = until_nul(bytes);
    if let Ok(r) = serde_json::from_slice::<Reply<'_>>(body) {
        return Ok(r);
    }
    Ok(Reply::deserialize(parse_reply(bytes)?).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::miner::cgminer::parse::parse_text;
    use proptest::prelude::*;

    /// Replies shaped as the firmwares send them (cgminer API-README multi form; LuxOS, stock
    /// bmminer and btminer keys as in asic-rs' captures).
    const REPLIES: [&str; 3] = [
        r#"{"summary":[{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"Elapsed":3453,"GHS 5s":59756.06,"GHS av":56917.91,"Power":"3250"}],"id":1}],"stats":[{"STATUS":[{"STATUS":"S"}],"STATS":[{"Type":"Antminer S19k Pro"},{"chain_rate1":"18910.28","chain_rate2":"18939.95","temp_chip1":"47-34-34-47","temp2_2":47.0,"fan1":1920,"fan2":1920,"Elapsed":3453}],"id":1}],"pools":[{"STATUS":[{"STATUS":"S"}],"POOLS":[{"URL":"stratum+tcp://a:3333","Status":"Alive","Priority":0,"Stratum Active":true}],"id":1}],"id":1}"#,
        r#"{"config":[{"STATUS":[{"STATUS":"S","Code":33}],"CONFIG":[{"Profile":"290MHz","CurtailMode":"None","RedLed":"auto"}],"id":1}],"profiles":[{"STATUS":[{"STATUS":"S"}],"PROFILES":[{"Profile Name":"290MHz","Watts":1280},{"Profile Name":"default","Watts":2760}],"id":1}],"power":[{"STATUS":[{"STATUS":"S"}],"POWER":[{"PSU":false,"Watts":1051}],"id":1}],"version":[{"STATUS":[{"STATUS":"S"}],"VERSION":[{"Type":"Antminer S19k Pro","LUXminer":"2025.4.8"}],"id":1}],"id":1}"#,
        r#"{"status":[{"STATUS":"S","When":1,"Code":131,"Msg":{"mineroff":"false"},"Description":""}],"edevs":[{"STATUS":[{"STATUS":"S"}],"DEVS":[{"ASC":0,"MHS av":42000000.0,"Chip Temp Avg":70.5}],"id":1}],"devdetails":[{"STATUS":[{"STATUS":"S"}],"DEVDETAILS":[{"Model":"M50S_VH50"}],"id":1}],"id":1}"#,
    ];
    const COMMANDS: [&str; 10] = [
        "summary",
        "stats",
        "pools",
        "config",
        "profiles",
        "power",
        "version",
        "status",
        "edevs",
        "devdetails",
    ];

    #[test]
    fn typed_and_tolerant_paths_agree() {
        use serde::de::DeserializeSeed;
        for raw in REPLIES {
            let fast = multi(raw.as_bytes(), &COMMANDS).unwrap();
            let value = parse_text(raw).unwrap();
            let slow = (MultiSeed {
                commands: &COMMANDS,
            })
            .deserialize(&value)
            .unwrap();
            // The tolerant path's `Value` sorts keys; compare command by command.
            for c in COMMANDS {
                assert_eq!(fast.get(c), slow.get(c), "{c} in {raw}");
            }
            assert!(fast.any_success());
        }
    }

    #[test]
    fn reads_the_fields_readings_use() {
        let m = multi(REPLIES[0].as_bytes(), &COMMANDS).unwrap();
        let s = &m.get("summary").unwrap().summary[0];
        assert!((s.hashrate.ths().unwrap() - 59.75606).abs() < 1e-9);
        assert_eq!(s.power.get(), Some(3250.0), "numbers as strings");
        let st = &m.get("stats").unwrap().stats;
        assert_eq!(st[0].model.as_str(), Some("Antminer S19k Pro"));
        assert_eq!(st[1].chain_rate[1].get(), Some(18939.95));
        assert_eq!(st[1].chain_temp[0][0], Some(47.0), "highest of a dash list");
        assert_eq!(st[1].chain_temp[1][1], Some(47.0));
        assert_eq!(st[1].fan[1].get(), Some(1920.0));
        let m = multi(REPLIES[2].as_bytes(), &COMMANDS).unwrap();
        assert_eq!(
            m.get("status").unwrap().msg.mineroff.as_str(),
            Some("false")
        );
        assert_eq!(
            m.get("edevs").unwrap().devs[0].chip_temp_avg.get(),
            Some(70.5)
        );
    }

    #[test]
    fn malformed_replies_take_the_tolerant_path() {
        // btminer's trailing comma and a reply cut short: serde_json refuses both.
        let raw = br#"{"summary":[{"STATUS":[{"STATUS":"S"}],"SUMMARY":[{"MHS av":126000000.0,"Elapsed":5,}],"id":1}],"pools":[{"STATUS":[{"STATUS":"S"}],"POOLS":[{"URL":"x"#;
        let m = multi(raw, &COMMANDS).unwrap();
        let s = &m.get("summary").unwrap().summary[0];
        assert!((s.hashrate.ths().unwrap() - 126.0).abs() < 1e-9);
        assert_eq!(s.elapsed.get(), Some(5.0));
        // The cut pool keeps no URL: nothing is made up.
        assert!(
            m.get("pools")
                .is_none_or(|p| p.pools.iter().all(|p| p.url.as_str().is_none()))
        );
    }

    #[test]
    fn a_failed_command_is_absent() {
        let raw = br#"{"summary":[{"STATUS":[{"STATUS":"E","Code":14,"Msg":"Invalid command"}],"id":1}],"id":1}"#;
        let m = multi(raw, &COMMANDS).unwrap();
        assert!(m.get("summary").is_none());
        assert!(!m.any_success());
        let one = single(br#"{"STATUS":"E","Code":"135","Msg":"check token err"}"#).unwrap();
        assert_eq!(
            (one.status.letter.as_str(), one.code.get()),
            (Some("E"), Some(135.0))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = multi(&bytes, &COMMANDS);
            let _ = single(&bytes);
        }
    }
}
