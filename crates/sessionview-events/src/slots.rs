//! Resource slots: slot name → exact decimal amount, summed without floats, written canonically.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Why a slot value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The text is not plain decimal notation (`"2"`, `"0.5"`): exponents, signs, `".5"` and the like.
    #[error(
        "slot `{slot}`: {value:?} is not a plain decimal number (digits, optionally `.` and digits)"
    )]
    NotDecimal { slot: String, value: String },
    /// Plain decimal, but more digits than exact arithmetic can hold (28 significant digits).
    #[error("slot `{slot}`: {value:?} has more digits than exact decimal arithmetic can hold")]
    OutOfRange { slot: String, value: String },
    /// A sum overflowed the exact range, or would need more than 28 significant digits (it is
    /// never rounded).
    #[error(
        "slot `{slot}`: the sum cannot be represented exactly (more than 28 significant digits)"
    )]
    Overflow { slot: String },
}

/// Parses one slot value exactly as the contract allows: digits, optionally a point and more digits.
pub fn parse_amount(slot: &str, value: &str) -> Result<Decimal, SlotError> {
    let (int, frac) = match value.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (value, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(SlotError::NotDecimal {
            slot: slot.to_owned(),
            value: value.to_owned(),
        });
    }
    // Leading zeros are accepted and dropped; they would otherwise count against the 28 digits.
    let trimmed = value.trim_start_matches('0');
    let trimmed = if trimmed.is_empty() || trimmed.starts_with('.') {
        // "000" → "0", "00.5" → "0.5"
        &value[value.len() - trimmed.len() - 1..]
    } else {
        trimmed
    };
    Decimal::from_str_exact(trimmed).map_err(|_| SlotError::OutOfRange {
        slot: slot.to_owned(),
        value: value.to_owned(),
    })
}

/// `a + b`, or `None` when the sum overflows or would be rounded: `rust_decimal` keeps the larger
/// scale of its operands unless it has to round, so a smaller scale means digits were lost. (With
/// a zero operand it returns the other one as it is, and an exact zero may come back with scale
/// 0: neither is rounding.)
fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    if a.is_zero() || b.is_zero() {
        return a.checked_add(b);
    }
    a.checked_add(b)
        .filter(|sum| sum.is_zero() || sum.scale() >= a.scale().max(b.scale()))
}

/// Writes an amount without exponent and without trailing zeros (`1.50` → `"1.5"`, `2.0` → `"2"`).
pub fn format_amount(amount: Decimal) -> String {
    amount.normalize().to_string()
}

/// A resource-slot object such as `{"cpu": "2", "mem": "4294967296", "cuda.shares": "0.5"}`.
///
/// Keys are kept sorted so that the canonical form is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSlots(BTreeMap<String, Decimal>);

impl ResourceSlots {
    /// An empty slot set (sums to nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a slot set from name/text pairs, validating every value.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, SlotError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            map.insert(k.to_owned(), parse_amount(k, v)?);
        }
        Ok(Self(map))
    }

    /// The amount of one slot, if present.
    pub fn get(&self, slot: &str) -> Option<Decimal> {
        self.0.get(slot).copied()
    }

    /// Iterates slots in canonical (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Decimal)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Whether no slot is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other` into `self` over the union of keys (a missing key counts as 0).
    pub fn add_assign(&mut self, other: &ResourceSlots) -> Result<(), SlotError> {
        for (k, v) in &other.0 {
            let entry = self.0.entry(k.clone()).or_insert(Decimal::ZERO);
            *entry =
                exact_add(*entry, *v).ok_or_else(|| SlotError::Overflow { slot: k.clone() })?;
        }
        Ok(())
    }

    /// Subtracts `other` (a part of `self`, such as one kernel of a session's sum) exactly; a key
    /// stays even when it reaches zero.
    pub fn sub_assign(&mut self, other: &ResourceSlots) -> Result<(), SlotError> {
        for (k, v) in &other.0 {
            let entry = self.0.entry(k.clone()).or_insert(Decimal::ZERO);
            *entry =
                exact_add(*entry, -*v).ok_or_else(|| SlotError::Overflow { slot: k.clone() })?;
        }
        Ok(())
    }

    /// Drops one slot.
    pub fn remove(&mut self, slot: &str) {
        self.0.remove(slot);
    }

    /// The sum of many slot sets.
    pub fn sum<'a>(items: impl IntoIterator<Item = &'a ResourceSlots>) -> Result<Self, SlotError> {
        let mut total = ResourceSlots::new();
        for s in items {
            total.add_assign(s)?;
        }
        Ok(total)
    }

    /// The canonical JSON object: every value a canonical decimal string.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(format_amount(*v))))
                .collect(),
        )
    }

    /// Reads the canonical JSON object back (as stored by the read model).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SlotError> {
        let object = value.as_object().ok_or_else(|| SlotError::NotDecimal {
            slot: String::new(),
            value: value.to_string(),
        })?;
        let mut map = BTreeMap::new();
        for (k, v) in object {
            let text = v.as_str().ok_or_else(|| SlotError::NotDecimal {
                slot: k.clone(),
                value: v.to_string(),
            })?;
            map.insert(k.clone(), parse_amount(k, text)?);
        }
        Ok(Self(map))
    }
}

impl fmt::Display for ResourceSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl FromStr for ResourceSlots {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: serde_json::Value =
            serde_json::from_str(s).map_err(|_| SlotError::NotDecimal {
                slot: String::new(),
                value: s.to_owned(),
            })?;
        Self::from_json(&value)
    }
}

impl Serialize for ResourceSlots {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, &format_amount(*v))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ResourceSlots {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SlotsVisitor;
        impl<'de> Visitor<'de> for SlotsVisitor {
            type Value = ResourceSlots;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource-slot object of decimal strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some(key) = access.next_key::<String>()? {
                    let value: SlotValue = access.next_value()?;
                    let amount = parse_amount(&key, &value.0).map_err(de::Error::custom)?;
                    map.insert(key, amount);
                }
                Ok(ResourceSlots(map))
            }
        }
        deserializer.deserialize_map(SlotsVisitor)
    }
}

/// A slot value must be a JSON string; a JSON number is refused with a message saying so.
struct SlotValue(String);

impl<'de> Deserialize<'de> for SlotValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SlotValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal number written as a JSON string, such as \"0.5\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SlotValue, E> {
                Ok(SlotValue(v.to_owned()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slots(json: &str) -> Result<ResourceSlots, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn accepts_plain_decimals_and_formats_canonically() {
        let s = slots(r#"{"cpu": "2", "mem": "4294967296", "cuda.shares": "0.50"}"#).unwrap();
        assert_eq!(
            s.to_json().to_string(),
            r#"{"cpu":"2","cuda.shares":"0.5","mem":"4294967296"}"#
        );
    }

    #[test]
    fn sums_that_would_round_are_refused() {
        let big = slots(r#"{"cpu": "9999999999999999999999999999"}"#).unwrap();
        let tenth = slots(r#"{"cpu": "0.4"}"#).unwrap();
        // 28 nines and .4 needs 29 significant digits: rust_decimal alone would round it away.
        assert_eq!(
            ResourceSlots::sum([&big, &tenth]),
            Err(SlotError::Overflow { slot: "cpu".into() })
        );
        let max = slots(r#"{"cpu": "79228162514264337593543950335"}"#).unwrap();
        assert!(ResourceSlots::sum([&max, &slots(r#"{"cpu": "1"}"#).unwrap()]).is_err());
        // Large but exact sums stay exact.
        assert!(ResourceSlots::sum([&big, &big]).is_ok());
        let ok = ResourceSlots::sum([&slots(r#"{"cpu": "1.5"}"#).unwrap(), &tenth]).unwrap();
        assert_eq!(ok.to_json().to_string(), r#"{"cpu":"1.9"}"#);
    }

    #[test]
    fn half_plus_half_is_one() {
        let a = slots(r#"{"cuda.shares": "0.5"}"#).unwrap();
        let total = ResourceSlots::sum([&a, &a]).unwrap();
        assert_eq!(total.to_json()["cuda.shares"], "1");
    }

    #[test]
    fn union_of_keys_with_missing_as_zero() {
        let a = slots(r#"{"cpu": "1"}"#).unwrap();
        let b = slots(r#"{"mem": "1024", "cpu": "1.25"}"#).unwrap();
        let total = ResourceSlots::sum([&a, &b]).unwrap();
        assert_eq!(
            total.to_json().to_string(),
            r#"{"cpu":"2.25","mem":"1024"}"#
        );
    }

    #[test]
    fn leading_zeros_are_dropped() {
        let s = slots(r#"{"a": "007", "b": "000", "c": "00.50"}"#).unwrap();
        assert_eq!(s.to_json().to_string(), r#"{"a":"7","b":"0","c":"0.5"}"#);
    }

    #[test]
    fn keeps_full_precision_beyond_f64() {
        let s = slots(r#"{"mem": "9007199254740993"}"#).unwrap();
        let total = ResourceSlots::sum([&s, &s]).unwrap();
        assert_eq!(total.to_json()["mem"], "18014398509481986");
    }

    #[test]
    fn refuses_everything_that_is_not_plain_decimal() {
        for bad in [
            r#""1e3""#,
            r#""Infinity""#,
            r#""-1""#,
            r#""+1""#,
            r#"".5""#,
            r#""5.""#,
            r#""""#,
            r#"" 1""#,
            r#""0x10""#,
            "1",
            "0.5",
            "null",
        ] {
            let json = format!(r#"{{"cpu": {bad}}}"#);
            let err = slots(&json).unwrap_err().to_string();
            assert!(
                err.contains("cpu") || err.contains("decimal"),
                "{bad}: error should name the problem, got {err}"
            );
        }
    }

    #[test]
    fn refuses_too_many_digits_instead_of_rounding() {
        let err = slots(r#"{"mem": "123456789012345678901234567890"}"#).unwrap_err();
        assert!(err.to_string().contains("more digits"), "{err}");
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(int in 0u64..u64::MAX, frac in 0u32..1_000_000, scale in 0usize..6) {
            let text = if scale == 0 { int.to_string() } else { format!("{int}.{frac:0>6}")[..int.to_string().len() + 1 + scale].to_owned() };
            let amount = parse_amount("x", &text).unwrap();
            let canonical = format_amount(amount);
            prop_assert!(!canonical.contains('e') && !canonical.contains('E'));
            prop_assert!(!(canonical.contains('.') && canonical.ends_with('0')));
            prop_assert_eq!(parse_amount("x", &canonical).unwrap(), amount);
        }

        #[test]
        fn sum_is_commutative(a in 0u64..1_000_000_000, b in 0u64..1_000_000_000, c in 0u32..100) {
            let x = ResourceSlots::parse([("cpu", a.to_string().as_str()), ("gpu", format!("0.{c}").as_str())]).unwrap();
            let y = ResourceSlots::parse([("cpu", b.to_string().as_str())]).unwrap();
            prop_assert_eq!(ResourceSlots::sum([&x, &y]).unwrap(), ResourceSlots::sum([&y, &x]).unwrap());
        }
    }
}
