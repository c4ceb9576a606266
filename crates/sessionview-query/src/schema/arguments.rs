//! Argument checks shared by the root fields: pages, status lists, ordering.

use async_graphql::{Error, Result};
use sessionview_events::Status;
use sessionview_store::Order;

use super::Limits;

pub(crate) fn check_page(limit: i32, offset: i32, limits: &Limits) -> Result<()> {
    if !(1..=limits.max_limit).contains(&limit) {
        return Err(Error::new(format!(
            "limit must be between 1 and {}, got {limit}",
            limits.max_limit
        )));
    }
    if !(0..=limits.max_offset).contains(&offset) {
        return Err(Error::new(format!(
            "offset must be between 0 and {} (limit: --max-offset; a larger offset is a scan), \
             got {offset}",
            limits.max_offset
        )));
    }
    Ok(())
}

/// Parses the comma-separated `status` argument; `None` or only blanks mean every status.
pub fn parse_statuses(arg: Option<&str>) -> Result<Vec<Status>> {
    let Some(arg) = arg else {
        return Ok(Vec::new());
    };
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Status>()
                .map_err(|e| Error::new(format!("status: {e}")))
        })
        .collect()
}

pub(crate) fn parse_order(
    key: Option<&str>,
    asc: Option<bool>,
    allowed: &[&'static str],
) -> Result<Option<Order>> {
    let Some(key) = key else { return Ok(None) };
    let column = allowed.iter().find(|k| **k == key).ok_or_else(|| {
        Error::new(format!(
            "unknown order_key {key:?}; valid keys are {}",
            allowed.join(", ")
        ))
    })?;
    Ok(Some(Order {
        column,
        ascending: asc.unwrap_or(false),
    }))
}

pub(crate) fn clamp_count(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use sessionview_store::{CONTAINER_ORDER_KEYS, SESSION_ORDER_KEYS};

    use super::*;

    #[test]
    fn status_argument_is_a_tolerant_comma_list() {
        assert_eq!(parse_statuses(None).unwrap(), vec![]);
        assert_eq!(
            parse_statuses(Some(" RUNNING , TERMINATED,")).unwrap(),
            vec![Status::Running, Status::Terminated]
        );
        let err = parse_statuses(Some("RUNNING,DONE")).unwrap_err().message;
        assert!(
            err.contains("\"DONE\"") && err.contains("PENDING, PREPARING"),
            "{err}"
        );
    }

    #[test]
    fn order_key_must_be_known() {
        let o = parse_order(Some("created_at"), Some(true), SESSION_ORDER_KEYS)
            .unwrap()
            .unwrap();
        assert_eq!((o.column, o.ascending), ("created_at", true));
        assert!(
            !parse_order(Some("name"), None, SESSION_ORDER_KEYS)
                .unwrap()
                .unwrap()
                .ascending
        );
        let err = parse_order(Some("agent"), None, CONTAINER_ORDER_KEYS)
            .unwrap_err()
            .message;
        assert!(
            err.contains("\"agent\"") && err.contains("container_id"),
            "{err}"
        );
    }

    #[test]
    fn pages_are_checked_not_clamped() {
        let l = Limits::default();
        assert!(check_page(1000, 0, &l).is_ok());
        assert!(
            check_page(1001, 0, &l)
                .unwrap_err()
                .message
                .contains("between 1 and 1000, got 1001")
        );
        assert!(check_page(0, 0, &l).is_err());
        assert!(
            check_page(10, -1, &l)
                .unwrap_err()
                .message
                .contains("got -1")
        );
    }
}
