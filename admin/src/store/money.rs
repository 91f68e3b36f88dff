//! Money as integer micro-USD: exact to store, sum and compare, shown as decimal strings.
//!
//! Floating point cannot hold 0.15 exactly, and a budget or an invoice that is off by a
//! rounding error is a bug someone pays for. So every amount is an `i64` count of
//! micro-USD (1 USD = 1 000 000), parsed from text digit by digit and printed with exactly
//! six decimals:
//!
//! ```
//! use tollgate_admin::store::MicroUsd;
//!
//! let price: MicroUsd = "0.15".parse().unwrap();
//! assert_eq!(price.micros(), 150_000);
//! assert_eq!(price.to_string(), "0.150000");
//! assert!("0.1234567".parse::<MicroUsd>().is_err()); // a seventh decimal is refused
//! assert!("-1".parse::<MicroUsd>().is_err());
//! ```
//!
//! JSON bodies of the admin API go through [`exact_json`], which reads the number's own
//! text (serde_json's `RawValue`), so `0.15` and `"0.15"` are both exact. Other formats
//! (the YAML config) reach [`MicroUsd`]'s `Deserialize`, which takes strings and integers
//! exactly and floats through their shortest round-trip text, refusing any float with more
//! significant digits than an `f64` holds.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Micro-USD in one USD.
const MICROS_PER_USD: i64 = 1_000_000;
/// Decimal places an amount may have.
const DECIMALS: usize = 6;
/// Digits before the point: 10^12 USD is beyond any budget or price, and keeps every amount
/// (times 10^6) well inside an `i64`.
const MAX_INT_DIGITS: usize = 12;
/// Significant digits an `f64` reproduces exactly (DBL_DIG).
const F64_DIGITS: usize = 15;

/// An amount of money in micro-USD. Never negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroUsd(i64);

/// Why a text is not an amount; the message is written for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AmountError(&'static str);

const NOT_AN_AMOUNT: AmountError = AmountError(
    "must be a non-negative USD amount with at most 6 decimals and 12 digits before the point, such as \"0.15\"",
);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    /// From a count of micro-USD; `None` when negative.
    pub fn from_micros(micros: i64) -> Option<Self> {
        (micros >= 0).then_some(Self(micros))
    }

    /// The count of micro-USD.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// From a float (a YAML or TOML number): exact when the float's shortest round-trip
    /// text has at most 6 decimals and at most 15 significant digits, an error otherwise
    /// (write such an amount as a string).
    pub fn from_f64(value: f64) -> Result<Self, AmountError> {
        if !value.is_finite() {
            return Err(NOT_AN_AMOUNT);
        }
        // `Display` for f64 prints the shortest text that parses back to the same float,
        // without an exponent.
        let text = format!("{value}");
        let significant = text
            .trim_start_matches(['-', '0', '.'])
            .chars()
            .filter(char::is_ascii_digit)
            .count();
        if significant > F64_DIGITS {
            return Err(AmountError(
                "has more significant digits than a JSON or YAML number keeps exactly; write it as a string",
            ));
        }
        parse_number(&text)
    }
}

impl fmt::Display for MicroUsd {
    /// Exactly six decimals, e.g. `0.150000`: the form answers and invoices show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_USD;
        let frac = self.0 % MICROS_PER_USD;
        write!(f, "{whole}.{frac:06}")
    }
}

impl FromStr for MicroUsd {
    type Err = AmountError;

    /// Exactly `^[0-9]{1,12}(\.[0-9]{1,6})?$`: the pattern the OpenAPI document states.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (whole, frac) = match s.split_once('.') {
            Some((whole, frac)) if !frac.is_empty() => (whole, frac),
            Some(_) => return Err(NOT_AN_AMOUNT),
            None => (s, ""),
        };
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > MAX_INT_DIGITS
            || frac.len() > DECIMALS
            || !digits(whole)
            || !digits(frac)
        {
            return Err(NOT_AN_AMOUNT);
        }
        let padded = format!("{frac:0<DECIMALS$}");
        let whole: i64 = whole.parse().map_err(|_| NOT_AN_AMOUNT)?;
        let frac: i64 = padded.parse().map_err(|_| NOT_AN_AMOUNT)?;
        Ok(Self(whole * MICROS_PER_USD + frac))
    }
}

/// Parses a JSON number's text (`-?int(.frac)?([eE][+-]?exp)?`) exactly. Trailing zeros
/// past the sixth decimal are fine (`1.50000000` is 1.5); a nonzero seventh decimal, a
/// negative amount or one of 10^12 USD or more is not. `-0` is zero.
fn parse_number(text: &str) -> Result<MicroUsd, AmountError> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, "0"),
    };
    let exponent: i64 = exponent
        .strip_prefix('+')
        .unwrap_or(exponent)
        .parse()
        .map_err(|_| NOT_AN_AMOUNT)?;
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(NOT_AN_AMOUNT);
    }
    // All digits as one integer, and the power of ten that scales it to micro-USD.
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    let scale = exponent
        .checked_add(i64::try_from(DECIMALS).unwrap_or(6))
        .and_then(|s| s.checked_sub(i64::try_from(frac.len()).ok()?))
        .ok_or(NOT_AN_AMOUNT)?;
    let micros: i128 = if digits.is_empty() {
        0
    } else if scale >= 0 {
        // 10^12 USD = 10^18 micro-USD; anything with more digits than that is too big.
        if i64::try_from(digits.len()).unwrap_or(i64::MAX) > 19 - scale {
            return Err(NOT_AN_AMOUNT);
        }
        let base: i128 = digits.parse().map_err(|_| NOT_AN_AMOUNT)?;
        base * 10_i128.pow(u32::try_from(scale).map_err(|_| NOT_AN_AMOUNT)?)
    } else {
        // Digits below a micro-USD must all be zero.
        let cut = usize::try_from(-scale).map_err(|_| NOT_AN_AMOUNT)?;
        if cut >= digits.len() {
            return Err(NOT_AN_AMOUNT);
        }
        let (kept, dropped) = digits.split_at(digits.len() - cut);
        if dropped.bytes().any(|b| b != b'0') || kept.len() > 19 {
            return Err(NOT_AN_AMOUNT);
        }
        kept.parse().map_err(|_| NOT_AN_AMOUNT)?
    };
    if micros != 0 && negative {
        return Err(NOT_AN_AMOUNT);
    }
    let limit = 10_i128.pow(u32::try_from(MAX_INT_DIGITS + DECIMALS).unwrap_or(18));
    if micros >= limit {
        return Err(NOT_AN_AMOUNT);
    }
    i64::try_from(micros)
        .map(MicroUsd)
        .map_err(|_| NOT_AN_AMOUNT)
}

impl Serialize for MicroUsd {
    /// A decimal string, never a JSON number: clients parse it without float rounding.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MicroUsd {
    /// For formats other than the admin API's JSON (which uses [`exact_json`]): strings and
    /// integers exactly, floats via [`MicroUsd::from_f64`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AmountVisitor)
    }
}

struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = MicroUsd;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative USD amount with at most 6 decimals, such as \"0.15\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MicroUsd, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MicroUsd, E> {
        parse_number(&v.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MicroUsd, E> {
        parse_number(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MicroUsd, E> {
        MicroUsd::from_f64(v).map_err(E::custom)
    }
}

/// `deserialize_with` helpers for JSON bodies: the amount is read as its raw JSON text, so
/// a number such as `0.15` never passes through an `f64`.
pub mod exact_json {
    use serde::de::{Deserialize, Deserializer, Error};
    use serde_json::value::RawValue;

    use super::{MicroUsd, parse_number};

    fn parse<E: Error>(raw: &RawValue) -> Result<MicroUsd, E> {
        let text = raw.get();
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(E::custom)?;
            s.parse().map_err(E::custom)
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            parse_number(text).map_err(E::custom)
        } else {
            Err(E::custom(
                "must be a USD amount: a decimal string such as \"0.15\" or a number",
            ))
        }
    }

    /// A required amount.
    pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MicroUsd, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        parse(&raw)
    }

    /// An amount that may be `null` or absent (pair with `#[serde(default)]`).
    pub fn nullable<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<MicroUsd>, D::Error> {
        let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
        match raw {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => parse(&raw).map(Some),
        }
    }
}

// === OpenAPI ===

impl utoipa::PartialSchema for MicroUsd {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[0-9]+\.[0-9]{6}$"))
            .description(Some(
                "USD as a decimal string with exactly six decimals (exact integer micro-USD)",
            ))
            .examples([serde_json::json!("0.150000")])
            .into()
    }
}

impl utoipa::ToSchema for MicroUsd {}

/// The schema of an amount in a request body: a decimal string (as answers show it) or a
/// JSON number, either with at most six decimals; `null` too when `nullable`.
pub(crate) fn amount_input_schema(
    description: &str,
    nullable: bool,
) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
    let mut any_of = AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0))
                .exclusive_maximum(Some(1_000_000_000_000_i64))
                .multiple_of(Some(0.000_001)),
        );
    if nullable {
        any_of = any_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    any_of
        .description(Some(format!(
            "{description} A decimal string such as \"0.15\" or a JSON number, at most 6 decimals."
        )))
        .into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn s(text: &str) -> Result<i64, AmountError> {
        text.parse::<MicroUsd>().map(MicroUsd::micros)
    }

    fn n(text: &str) -> Result<i64, AmountError> {
        parse_number(text).map(MicroUsd::micros)
    }

    #[test]
    fn strings_parse_exactly() {
        assert_eq!(s("0"), Ok(0));
        assert_eq!(s("0.15"), Ok(150_000));
        assert_eq!(s("0.000001"), Ok(1));
        assert_eq!(s("25"), Ok(25_000_000));
        assert_eq!(s("25.000000"), Ok(25_000_000));
        assert_eq!(s("999999999999.999999"), Ok(999_999_999_999_999_999));
        assert_eq!(s("007.5"), Ok(7_500_000));
        for bad in [
            "",
            ".",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "0.1234567",
            " 1",
            "1 ",
            "1,5",
            "0x10",
            "1000000000000",
            "٣",
        ] {
            assert!(s(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_parse_exactly() {
        assert_eq!(n("0.15"), Ok(150_000));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("-0"), Ok(0));
        assert_eq!(n("-0.0"), Ok(0));
        assert_eq!(n("1.50000000"), Ok(1_500_000));
        assert_eq!(n("1.5e2"), Ok(150_000_000));
        assert_eq!(n("15E-2"), Ok(150_000));
        assert_eq!(n("1e-6"), Ok(1));
        assert_eq!(n("1e+3"), Ok(1_000_000_000));
        assert_eq!(n("0.000000e5"), Ok(0));
        assert_eq!(n("999999999999.999999"), Ok(999_999_999_999_999_999));
        for bad in [
            "1e-7",
            "0.1234567",
            "-1",
            "-0.000001",
            "1e12",
            "1000000000000",
            "1e999999999999999999999",
            "1e-999999999999999999999",
            "99999999999999999999999999",
            "0.10000000000000001",
        ] {
            assert!(n(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn floats_use_their_shortest_text() {
        let f = |v: f64| MicroUsd::from_f64(v).map(MicroUsd::micros);
        assert_eq!(f(0.15), Ok(150_000));
        assert_eq!(f(0.075), Ok(75_000));
        assert_eq!(f(2.5), Ok(2_500_000));
        assert_eq!(f(1e-6), Ok(1));
        assert!(f(1e-7).is_err());
        assert!(f(-1.0).is_err());
        assert!(f(f64::NAN).is_err());
        assert!(f(f64::INFINITY).is_err());
        // 17 significant digits: an f64 cannot be trusted to have kept them.
        assert!(f(123_456_789_012.123_45).is_err());
    }

    #[test]
    fn prints_six_decimals() {
        let show = |m: i64| MicroUsd::from_micros(m).unwrap().to_string();
        assert_eq!(show(0), "0.000000");
        assert_eq!(show(150_000), "0.150000");
        assert_eq!(show(25_000_000), "25.000000");
        assert_eq!(show(1), "0.000001");
        assert!(MicroUsd::from_micros(-1).is_none());
        assert_eq!(
            serde_json::to_string(&MicroUsd::from_micros(150_000)).unwrap(),
            r#""0.150000""#
        );
    }

    #[test]
    fn json_bodies_are_exact() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[serde(deserialize_with = "exact_json::required")]
            a: MicroUsd,
            #[serde(default, deserialize_with = "exact_json::nullable")]
            b: Option<MicroUsd>,
        }
        let parse = |json: &str| serde_json::from_str::<Body>(json);
        let body = parse(r#"{"a": 0.15, "b": "25"}"#).unwrap();
        assert_eq!(body.a.micros(), 150_000);
        assert_eq!(body.b.map(MicroUsd::micros), Some(25_000_000));
        assert_eq!(parse(r#"{"a": "0.15", "b": null}"#).unwrap().b, None);
        assert_eq!(parse(r#"{"a": 1}"#).unwrap().b, None);
        // A float would round this to 0.1; the raw text says otherwise.
        assert!(parse(r#"{"a": 0.10000000000000001}"#).is_err());
        for bad in [
            r#"{"a": -1}"#,
            r#"{"a": "-1"}"#,
            r#"{"a": true}"#,
            r#"{"a": null}"#,
            r#"{"a": [1]}"#,
            r#"{"a": 1, "b": {}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_formats_use_the_visitor() {
        let v: MicroUsd = serde_json::from_str("0.15").unwrap();
        assert_eq!(v.micros(), 150_000);
        let v: MicroUsd = serde_json::from_str("3").unwrap();
        assert_eq!(v.micros(), 3_000_000);
        let v: MicroUsd = serde_json::from_str(r#""0.075""#).unwrap();
        assert_eq!(v.micros(), 75_000);
        assert!(serde_json::from_str::<MicroUsd>("-3").is_err());
    }
}
