//! The seed's custom scalars: `DateTime`, `JSONString` and `BigInt` (`UUID` is async-graphql's).

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime as ChronoDateTime, Utc};
use sessionview_events::format_timestamp;

/// ISO 8601 with offset and microseconds: `"2020-02-16T15:47:28.997335+00:00"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime(pub ChronoDateTime<Utc>);

#[Scalar(name = "DateTime")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => ChronoDateTime::parse_from_rfc3339(s)
                .map(|d| DateTime(d.with_timezone(&Utc)))
                .map_err(|e| InputValueError::custom(format!("invalid DateTime {s:?}: {e}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(format_timestamp(self.0))
    }
}

/// A JSON value serialized as a string (`"{\"cpu\": \"2\"}"`); clients parse it again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonString(pub serde_json::Value);

#[Scalar(name = "JSONString")]
impl ScalarType for JsonString {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => serde_json::from_str(s)
                .map(JsonString)
                .map_err(|e| InputValueError::custom(format!("invalid JSONString: {e}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// A JSON integer that may exceed 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BigInt(pub i64);

#[Scalar(name = "BigInt")]
impl ScalarType for BigInt {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_i64()
                .map(BigInt)
                .ok_or_else(|| InputValueError::custom("BigInt must be an integer")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(self.0.into())
    }
}
