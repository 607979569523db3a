//! Webhook deliveries in storage: the record that dedupes them by source
//! and delivery id, with the batch insert's PostgreSQL form beside its
//! SQLite form.

use std::collections::HashSet;

use diesel::prelude::*;

use super::schema::deliveries;
use super::{Conn, StoreError};
use crate::dispatch;

#[derive(Insertable)]
#[diesel(table_name = deliveries)]
pub struct NewDelivery<'a> {
    pub source: &'a str,
    pub delivery_id: &'a str,
    pub received_at: i64,
    pub body_sha256: &'a str,
    pub ticket: Option<String>,
    pub outcome: &'static str,
}

/// Inserts the rows that are new; answers which were (by source and id).
pub fn insert_new(
    conn: &mut Conn<'_>,
    rows: &[NewDelivery<'_>],
) -> Result<HashSet<(String, String)>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(match conn {
        Conn::Postgres(c) => {
            use diesel::sql_types::{Array, BigInt, Nullable, Text};
            #[derive(QueryableByName)]
            struct Key {
                #[diesel(sql_type = Text)]
                source: String,
                #[diesel(sql_type = Text)]
                delivery_id: String,
            }
            // Column arrays keep the text the same for any batch size, so
            // the statement stays prepared.
            let col = |f: fn(&NewDelivery<'_>) -> String| rows.iter().map(f).collect::<Vec<_>>();
            super::prepared::Statement::new(
                "INSERT INTO deliveries (source, delivery_id, received_at, body_sha256, ticket, outcome) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                   $6::text[]) \
                 ON CONFLICT DO NOTHING RETURNING source, delivery_id",
            )
            .bind::<Array<Text>, _>(col(|r| r.source.to_string()))
            .bind::<Array<Text>, _>(col(|r| r.delivery_id.to_string()))
            .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(col(|r| r.body_sha256.to_string()))
            .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.ticket.clone()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(col(|r| r.outcome.to_string()))
            .load::<Key>(&mut **c)?
            .into_iter()
            .map(|k| (k.source, k.delivery_id))
            .collect()
        }
        Conn::Sqlite(c) => {
            let mut new = HashSet::new();
            for row in rows {
                let n = diesel::insert_into(deliveries::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(&mut **c)?;
                if n > 0 {
                    new.insert((row.source.to_string(), row.delivery_id.to_string()));
                }
            }
            new
        }
    })
}

/// The ticket each stored delivery named, for those among `sources` x `ids`
/// (the caller keeps the pairs it asked about).
pub fn tickets_of(
    conn: &mut Conn<'_>,
    sources: &[&str],
    ids: &[&str],
) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
    Ok(dispatch!(conn, c => deliveries::table
        .filter(deliveries::source.eq_any(sources))
        .filter(deliveries::delivery_id.eq_any(ids))
        .select((deliveries::source, deliveries::delivery_id, deliveries::ticket))
        .load(c))?)
}
