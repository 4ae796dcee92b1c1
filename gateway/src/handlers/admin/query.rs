//! The query strings of the admin listings: known parameters only, each at most once, and the
//! page size and cursor every listing shares.

use crate::error::ApiError;
use http::Uri;
use sea_orm::{ConnectionTrait, EntityTrait, QuerySelect, Select};

/// Rows per page unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: u64 = 20;
pub const MAX_LIMIT: u64 = 100;

pub struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters of `uri`, each one of `known` and given once; anything else is a `400`, so
    /// a misspelt filter is not silently ignored.
    pub fn parse(uri: &Uri, known: &[&str]) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}; known: {}",
                    known.join(", ")
                )));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::BadRequest(format!(
                    "the query parameter {k} is given twice"
                )));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Params(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
    pub fn limit(&self) -> Result<u64, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                }),
        }
    }

    /// `cursor`: what a previous page's `next_cursor` said (a row id, in decimal).
    pub fn cursor(&self) -> Result<Option<u64>, ApiError> {
        self.get("cursor")
            .map(|raw| {
                raw.parse::<u64>()
                    .ok()
                    .filter(|_| raw.len() <= 19 && raw.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "cursor must be a next_cursor of a previous page".into(),
                        )
                    })
            })
            .transpose()
    }
}

/// A page of at most `limit` rows of `find` and the cursor of the next page (see [`page`]).
pub async fn read_page<E: EntityTrait>(
    find: Select<E>,
    limit: u64,
    db: &impl ConnectionTrait,
    id: impl Fn(&E::Model) -> i64,
) -> Result<(Vec<E::Model>, Option<String>), ApiError> {
    let rows = find
        .limit(limit + 1)
        .all(db)
        .await
        .map_err(ApiError::from_db)?;
    Ok(page(rows, limit, id))
}

/// A page of at most `limit` rows out of `rows` (read with one more, to know whether another page
/// follows), and the cursor of the next page: the id of its last row.
pub fn page<T>(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<String>) {
    if rows.len() as u64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(|r| id(r).to_string());
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Result<Params, ApiError> {
        Params::parse(
            &format!("/x?{q}").parse().unwrap(),
            &["limit", "cursor", "cause"],
        )
    }

    #[test]
    fn known_parameters_once_each() {
        let p = params("cause=release%3Apayment_timeout&limit=5").unwrap();
        assert_eq!(p.get("cause"), Some("release:payment_timeout"));
        assert_eq!(p.limit().unwrap(), 5);
        assert_eq!(p.cursor().unwrap(), None);
        assert!(params("limit=1&limit=2").is_err());
        assert!(params("colour=red").is_err());
        assert_eq!(params("").unwrap().limit().unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn limits_and_cursors_out_of_range_are_refused() {
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=", "limit=1.0"] {
            assert!(params(bad).unwrap().limit().is_err(), "{bad}");
        }
        for bad in [
            "cursor=",
            "cursor=-1",
            "cursor=x",
            "cursor=+1",
            "cursor=99999999999999999999",
        ] {
            assert!(params(bad).unwrap().cursor().is_err(), "{bad}");
        }
        assert_eq!(params("cursor=42").unwrap().cursor().unwrap(), Some(42));
    }

    #[test]
    fn a_page_names_its_last_row_when_more_follow() {
        assert_eq!(
            page(vec![1, 2, 3], 2, |r| *r),
            (vec![1, 2], Some("2".into()))
        );
        assert_eq!(page(vec![1, 2], 2, |r| *r), (vec![1, 2], None));
    }
}
