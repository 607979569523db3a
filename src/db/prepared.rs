//! Hand-written PostgreSQL statements that the connection keeps prepared.
//!
//! Diesel's `sql_query` never caches its statement, so PostgreSQL parses
//! and analyses it again on every execution. The hot paths' statements
//! (intake's reads and writes, the audit append, grant steps, claims) have
//! fixed text, so preparing each once per connection saves that work; they
//! are still planned for their values every time (`plan_cache_mode`).

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// A statement in PostgreSQL's own `$N` notation and its values: `$N` is
/// the N-th value bound, and may appear more than once.
pub struct Statement<'a> {
    sql: &'a str,
    binds: Vec<Box<dyn Bind + 'a>>,
}

impl<'a> Statement<'a> {
    pub fn new(sql: &'a str) -> Self {
        Statement {
            sql,
            binds: Vec::new(),
        }
    }

    pub fn bind<ST, T>(mut self, value: T) -> Self
    where
        Pg: HasSqlType<ST>,
        T: ToSql<ST, Pg> + 'a,
        ST: 'a,
    {
        self.binds
            .push(Box::new(Bound::<ST, T>(value, PhantomData)));
        self
    }
}

trait Bind {
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Bound<ST, T>(T, PhantomData<ST>);

impl<ST, T> Bind for Bound<ST, T>
where
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.0)
    }
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Diesel numbers the values in the order they are pushed, so each
        // `$N` is replaced by a push of the N-th value where it stands.
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let tail = &rest[at + 1..];
            let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                out.push_sql("$");
                rest = tail;
                continue;
            }
            let bind = tail[..digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError(
                        format!("no value bound for ${}", &tail[..digits]).into(),
                    )
                })?;
            bind.push(&mut out)?;
            rest = &tail[digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl QueryId for Statement<'_> {
    type QueryId = ();
    // Not known at compile time: the cache is keyed by the text instead.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Statement<'_> {}

#[cfg(test)]
mod tests {
    use super::Statement;
    use diesel::sql_types::{BigInt, Text};

    #[test]
    fn each_placeholder_pushes_its_own_value_in_place() {
        let q = Statement::new("SELECT $2, $1 WHERE x = $2 AND y = '$'")
            .bind::<Text, _>("first")
            .bind::<BigInt, _>(2i64);
        let shown = diesel::debug_query::<diesel::pg::Pg, _>(&q).to_string();
        assert!(
            shown.starts_with("SELECT $1, $2 WHERE x = $3 AND y = '$'"),
            "{shown}"
        );
        assert!(shown.contains("[2, \"first\", 2]"), "{shown}");
    }
}
