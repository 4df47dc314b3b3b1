//! [`ActorStore`] on SQLite and PostgreSQL (see [`crate::store::actors`] for the rules).
//!
//! A receive is one `UPDATE … RETURNING` over the recipient's visible messages; on PostgreSQL the
//! rows are picked `FOR UPDATE SKIP LOCKED`, so two hubs receiving for the same actor never hand
//! out the same message twice at once. On SQLite the single writer connection serialises them.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, SqlStore, is_unique_violation};
use crate::store::StoreError;
use crate::store::actors::{
    AckOutcome, ActorStore, GrantRow, MailboxAnswer, MailboxOp, MessageFilter, MessageRow,
    MessageState, NewMessage, ReviewOption, ReviewRow, ReviewState, SentMessage, TriggerRow,
    apply_each,
};

const MESSAGE_COLUMNS: &str = "id, sender, recipient, team, payload, idempotency_key, state, \
    deliveries, max_deliveries, visibility_ms, visible_at_ms, run_id, reason, created_at_ms, \
    delivered_at_ms, acked_at_ms";

fn decode(e: String) -> sqlx::Error {
    sqlx::Error::Decode(e.into())
}

fn message_from_row(row: &AnyRow) -> Result<MessageRow, sqlx::Error> {
    Ok(MessageRow {
        id: row.try_get("id")?,
        sender: row.try_get("sender")?,
        recipient: row.try_get("recipient")?,
        team: row.try_get("team")?,
        payload: row.try_get("payload")?,
        idempotency_key: row.try_get("idempotency_key")?,
        state: row.try_get::<String, _>("state")?.parse().map_err(decode)?,
        deliveries: row.try_get("deliveries")?,
        max_deliveries: row.try_get("max_deliveries")?,
        visibility_ms: row.try_get("visibility_ms")?,
        visible_at_ms: row.try_get("visible_at_ms")?,
        run_id: row.try_get("run_id")?,
        reason: row.try_get("reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
        delivered_at_ms: row.try_get("delivered_at_ms")?,
        acked_at_ms: row.try_get("acked_at_ms")?,
    })
}

const REVIEW_COLUMNS: &str = "id, actor_id, title, detail, request_key, options, state, \
    option_id, answered_by, created_at_ms, answered_at_ms";

fn review_from_row(row: &AnyRow) -> Result<ReviewRow, sqlx::Error> {
    let options: Vec<ReviewOption> = serde_json::from_str(&row.try_get::<String, _>("options")?)
        .map_err(|e| decode(format!("review options: {e}")))?;
    Ok(ReviewRow {
        id: row.try_get("id")?,
        actor_id: row.try_get("actor_id")?,
        title: row.try_get("title")?,
        detail: row.try_get("detail")?,
        request_key: row.try_get("request_key")?,
        options,
        state: row.try_get::<String, _>("state")?.parse().map_err(decode)?,
        option_id: row.try_get("option_id")?,
        answered_by: row.try_get("answered_by")?,
        created_at_ms: row.try_get("created_at_ms")?,
        answered_at_ms: row.try_get("answered_at_ms")?,
    })
}

const TRIGGER_COLUMNS: &str =
    "id, actor_id, schedule, payload, next_due_ms, fired, last_fired_ms, created_at_ms";

fn trigger_from_row(row: &AnyRow) -> Result<TriggerRow, sqlx::Error> {
    Ok(TriggerRow {
        id: row.try_get("id")?,
        actor_id: row.try_get("actor_id")?,
        schedule: row.try_get("schedule")?,
        payload: row.try_get("payload")?,
        next_due_ms: row.try_get("next_due_ms")?,
        fired: row.try_get("fired")?,
        last_fired_ms: row.try_get("last_fired_ms")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Inserts one message unless its key is taken (`$1` to `$11`); returns the new row, or nothing.
const INSERT_MESSAGE_SQL: &str = "INSERT INTO actor_messages (sender, recipient, team, payload, \
    idempotency_key, state, deliveries, max_deliveries, visibility_ms, visible_at_ms, created_at_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10) \
    ON CONFLICT (sender, recipient, idempotency_key) DO NOTHING RETURNING id";

/// Sends the messages that used up their deliveries and are visible again at `now` to the
/// dead-letter list: `recipient`'s, or everyone's.
fn dead_letter_sql(recipient: Option<&str>, now: &str) -> String {
    let whose = recipient.map_or(String::new(), |r| format!("recipient = {r} AND "));
    format!(
        "UPDATE actor_messages SET state = 'dead', \
         reason = 'not acked after ' || CAST(deliveries AS TEXT) || ' deliveries' \
         WHERE {whose}state = 'delivered' AND visible_at_ms <= {now} \
         AND deliveries >= max_deliveries"
    )
}

/// The ids of `recipient`'s messages a receive at `now` may hand out, oldest first, at most
/// `limit`: visible, deliveries left, and no earlier message of the same sender in flight.
/// `lock` follows the pick (PostgreSQL's `FOR UPDATE SKIP LOCKED`).
fn receivable_sql(recipient: &str, now: &str, limit: &str, lock: &str) -> String {
    format!(
        "SELECT m.id FROM actor_messages m WHERE m.recipient = {recipient} \
         AND m.state IN ('pending', 'delivered') AND m.visible_at_ms <= {now} \
         AND m.deliveries < m.max_deliveries \
         AND NOT EXISTS (SELECT 1 FROM actor_messages e WHERE e.recipient = m.recipient \
         AND e.sender = m.sender AND e.id < m.id AND e.state = 'delivered' \
         AND e.visible_at_ms > {now}) ORDER BY m.id LIMIT {limit}{lock}"
    )
}

/// The hand-out itself: delivered to `run` at `now`, hidden for the visibility timeout.
fn hand_out_sql(now: &str, run: &str) -> String {
    format!(
        "UPDATE actor_messages SET state = 'delivered', deliveries = deliveries + 1, \
         visible_at_ms = {now} + visibility_ms, delivered_at_ms = {now}, run_id = {run} "
    )
}

/// A receive on PostgreSQL (after [`dead_letter_sql`]): `$1` recipient, `$2` now, `$3` limit,
/// `$4` run.
static RECEIVE_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH picked AS ({}) {}FROM picked WHERE actor_messages.id = picked.id RETURNING \
         actor_messages.id, sender, recipient, team, payload, idempotency_key, state, \
         deliveries, max_deliveries, visibility_ms, visible_at_ms, run_id, reason, \
         created_at_ms, delivered_at_ms, acked_at_ms",
        receivable_sql("$1", "$2", "$3", " FOR UPDATE SKIP LOCKED"),
        hand_out_sql("$2", "$4")
    )
});

/// What an insert of a row with key `id` came to: a taken key is [`StoreError::Duplicate`].
fn inserted<T>(
    result: Result<T, sqlx::Error>,
    what: &'static str,
    id: &str,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate {
            what,
            id: id.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Most ids one statement names.
const MAX_IDS_PER_STATEMENT: usize = 500;

/// `$first, $first+1, …` for `n` ids.
fn id_marks(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most rows one multi-row insert carries (10 parameters each).
const MAX_ROWS_PER_INSERT: usize = 256;

/// Binds a new message's parameters (see [`INSERT_MESSAGE_SQL`]).
fn bind_new_message<'q>(query: super::AnyQuery<'q>, m: &'q NewMessage) -> super::AnyQuery<'q> {
    query
        .bind(&m.sender)
        .bind(&m.recipient)
        .bind(&m.team)
        .bind(&m.payload)
        .bind(&m.idempotency_key)
        .bind(MessageState::Pending.as_str())
        .bind(m.max_deliveries)
        .bind(m.visibility_ms)
        .bind(m.now_ms)
        .bind(m.now_ms)
}

/// The row a new message became, with the id the store gave it.
fn stored_row(m: &NewMessage, id: i64) -> MessageRow {
    MessageRow {
        id,
        sender: m.sender.clone(),
        recipient: m.recipient.clone(),
        team: m.team.clone(),
        payload: m.payload.clone(),
        idempotency_key: m.idempotency_key.clone(),
        state: MessageState::Pending,
        deliveries: 0,
        max_deliveries: m.max_deliveries,
        visibility_ms: m.visibility_ms,
        visible_at_ms: m.now_ms,
        created_at_ms: m.now_ms,
        ..MessageRow::default()
    }
}

/// Inserts messages without keys (they cannot conflict) in one statement. The ids a statement
/// assigns increase in the order of its rows (SQLite's rowids and a PostgreSQL sequence are both
/// drawn row by row), so the sorted ids belong to the rows in order.
async fn insert_run(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    run: &[&NewMessage],
    sent: &mut Vec<SentMessage>,
) -> Result<(), StoreError> {
    let sql = multi_insert_sql(run.len(), 0);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for m in run {
        query = bind_new_message(query, m);
    }
    let returned = query.fetch_all(&mut **tx).await?;
    zip_ids(run, &returned, sent)
}

/// A multi-row insert of `n` messages, its parameters numbered from `offset + 1`.
fn multi_insert_sql(n: usize, offset: usize) -> String {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let p = offset + i * 10;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, 0, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6,
                p + 7,
                p + 8,
                p + 9,
                p + 10
            )
        })
        .collect();
    format!(
        "INSERT INTO actor_messages (sender, recipient, team, payload, idempotency_key, state, \
         deliveries, max_deliveries, visibility_ms, visible_at_ms, created_at_ms) VALUES {} \
         RETURNING id",
        rows.join(", ")
    )
}

/// The stored rows of `run`, from the ids its inserts returned (sorted: see [`insert_run`]).
fn zip_ids(
    run: &[&NewMessage],
    returned: &[AnyRow],
    sent: &mut Vec<SentMessage>,
) -> Result<(), StoreError> {
    let mut ids = returned
        .iter()
        .map(|row| row.try_get::<i64, _>("id"))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() != run.len() {
        return Err(StoreError::Conflict(format!(
            "storing {} messages returned {} ids",
            run.len(),
            ids.len()
        )));
    }
    ids.sort_unstable();
    sent.extend(run.iter().zip(ids).map(|(m, id)| SentMessage {
        message: stored_row(m, id),
        duplicate: false,
    }));
    Ok(())
}

/// Who holds, and in which state, each message an ack did not ack.
type Refusals = std::collections::HashMap<i64, (String, MessageState)>;

/// One outcome per id named, in order, from what was acked and what the others are.
fn ack_outcomes(
    recipient: &str,
    ids: &[i64],
    acked: &std::collections::HashSet<i64>,
    found: &Refusals,
) -> Vec<AckOutcome> {
    let mut first = std::collections::HashSet::new();
    ids.iter()
        .map(|id| {
            // An id named twice: acked by the first mention, already acked by the next.
            let fresh = first.insert(*id);
            if acked.contains(id) {
                return if fresh {
                    AckOutcome::Acked
                } else {
                    AckOutcome::AlreadyAcked
                };
            }
            match found.get(id) {
                None => AckOutcome::NotFound,
                Some((owner, _)) if owner != recipient => AckOutcome::NotYours,
                Some((_, MessageState::Acked)) => AckOutcome::AlreadyAcked,
                Some((_, state)) => AckOutcome::NotDelivered(*state),
            }
        })
        .collect()
}

impl SqlStore {
    /// Why the ids an ack did not ack were not (who holds them, in which state), in one look
    /// per 500; nothing to look at when every one was acked.
    async fn ack_refusals(
        &self,
        ids: &[i64],
        acked: &std::collections::HashSet<i64>,
        pool: &sqlx::AnyPool,
    ) -> Result<Refusals, StoreError> {
        let rest: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !acked.contains(id))
            .collect();
        let mut found = Refusals::new();
        for chunk in rest.chunks(MAX_IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT id, recipient, state FROM actor_messages WHERE id IN ({})",
                id_marks(chunk.len(), 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(pool).await? {
                let state: MessageState =
                    row.try_get::<String, _>("state")?.parse().map_err(decode)?;
                found.insert(
                    row.try_get::<i64, _>("id")?,
                    (row.try_get::<String, _>("recipient")?, state),
                );
            }
        }
        Ok(found)
    }

    /// Runs a `BEGIN IMMEDIATE; …; COMMIT` statement list on the writer in one round trip; the
    /// rows its statements return. A failed statement leaves the transaction open: it is rolled
    /// back before the connection goes back to the pool.
    async fn sqlite_script(&self, script: super::AnyQuery<'_>) -> Result<Vec<AnyRow>, StoreError> {
        let mut connection = self.writer.acquire().await?;
        match script.fetch_all(&mut *connection).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                super::rollback_quietly(&mut connection).await;
                Err(e.into())
            }
        }
    }
}

/// A value bound in a batch's statement list, in the order of its numbers.
enum Arg {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
}

/// A batch's statement list and what its returned rows belong to.
struct BatchScript {
    sql: String,
    args: Vec<Arg>,
}

impl BatchScript {
    fn mark(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("${}", self.args.len())
    }

    fn message_values(&mut self, m: &NewMessage) -> String {
        let v = [
            self.mark(Arg::Text(m.sender.clone())),
            self.mark(Arg::Text(m.recipient.clone())),
            self.mark(Arg::Text(m.team.clone())),
            self.mark(Arg::Text(m.payload.clone())),
            self.mark(Arg::MaybeText(m.idempotency_key.clone())),
            self.mark(Arg::Text(MessageState::Pending.as_str().into())),
            self.mark(Arg::Int(m.max_deliveries)),
            self.mark(Arg::Int(m.visibility_ms)),
            self.mark(Arg::Int(m.now_ms)),
            self.mark(Arg::Int(m.now_ms)),
        ];
        format!(
            "({}, {}, {}, {}, {}, {}, 0, {}, {}, {}, {})",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]
        )
    }

    /// Adds `op` (number `n`); every row its statement returns carries `op = n`.
    fn push(&mut self, n: usize, op: &MailboxOp) {
        match op {
            MailboxOp::Insert(messages) => {
                for chunk in messages.chunks(MAX_ROWS_PER_INSERT) {
                    let rows: Vec<String> = chunk.iter().map(|m| self.message_values(m)).collect();
                    // One row back, not one per message: SQLite's single writer gives a
                    // statement's rows consecutive ids, ending at last_insert_rowid().
                    self.sql.push_str(&format!(
                        "INSERT INTO actor_messages (sender, recipient, team, payload, \
                         idempotency_key, state, deliveries, max_deliveries, visibility_ms, \
                         visible_at_ms, created_at_ms) VALUES {}; SELECT {n} AS op, \
                         last_insert_rowid() AS last_id, changes() AS inserted; ",
                        rows.join(", ")
                    ));
                }
            }
            MailboxOp::Receive {
                recipient,
                run_id,
                now_ms,
                limit,
            } => {
                let r = self.mark(Arg::Text(recipient.clone()));
                let now = self.mark(Arg::Int(*now_ms));
                let limit = self.mark(Arg::Int(i64::from(*limit)));
                let run = self.mark(Arg::Text(run_id.clone()));
                self.sql.push_str(&format!(
                    "{}; {}WHERE id IN ({}) RETURNING {n} AS op, {MESSAGE_COLUMNS}; ",
                    dead_letter_sql(Some(&r), &now),
                    hand_out_sql(&now, &run),
                    receivable_sql(&r, &now, &limit, "")
                ));
            }
            MailboxOp::Ack {
                recipient,
                ids,
                now_ms,
            } => {
                let r = self.mark(Arg::Text(recipient.clone()));
                let now = self.mark(Arg::Int(*now_ms));
                for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
                    let marks: Vec<String> =
                        chunk.iter().map(|id| self.mark(Arg::Int(*id))).collect();
                    self.sql.push_str(&format!(
                        "UPDATE actor_messages SET state = 'acked', acked_at_ms = {now} WHERE \
                         recipient = {r} AND state = 'delivered' AND id IN ({}) RETURNING {n} \
                         AS op, id; ",
                        marks.join(", ")
                    ));
                }
            }
        }
    }
}

impl SqlStore {
    /// Mailbox writes on SQLite in one statement list: one round trip to the single writer and
    /// one commit for all of them (inserts here carry no idempotency key).
    async fn sqlite_batch(&self, ops: &[MailboxOp]) -> Result<Vec<MailboxAnswer>, StoreError> {
        let mut script = BatchScript {
            sql: String::from("BEGIN IMMEDIATE; "),
            args: Vec::new(),
        };
        for (n, op) in ops.iter().enumerate() {
            script.push(n, op);
        }
        script.sql.push_str("COMMIT");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(script.sql));
        for arg in script.args {
            query = match arg {
                Arg::Text(t) => query.bind(t),
                Arg::MaybeText(t) => query.bind(t),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = self.sqlite_script(query).await?;
        let mut by_op: Vec<Vec<AnyRow>> = (0..ops.len()).map(|_| Vec::new()).collect();
        for row in rows {
            let n = usize::try_from(row.try_get::<i64, _>("op")?).unwrap_or(usize::MAX);
            if let Some(slot) = by_op.get_mut(n) {
                slot.push(row);
            }
        }
        let mut answers = Vec::with_capacity(ops.len());
        for (op, rows) in ops.iter().zip(by_op) {
            answers.push(match op {
                MailboxOp::Insert(messages) => {
                    let mut sent = Vec::with_capacity(messages.len());
                    for (chunk, row) in messages.chunks(MAX_ROWS_PER_INSERT).zip(&rows) {
                        let last: i64 = row.try_get("last_id")?;
                        let inserted: i64 = row.try_get("inserted")?;
                        let n = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
                        if inserted != n {
                            return Err(StoreError::Conflict(format!(
                                "storing {n} messages stored {inserted}"
                            )));
                        }
                        sent.extend(chunk.iter().zip(last - n + 1..).map(|(m, id)| SentMessage {
                            message: stored_row(m, id),
                            duplicate: false,
                        }));
                    }
                    if sent.len() != messages.len() {
                        return Err(StoreError::Conflict(format!(
                            "storing {} messages answered {} ids",
                            messages.len(),
                            sent.len()
                        )));
                    }
                    MailboxAnswer::Inserted(sent)
                }
                MailboxOp::Receive { .. } => {
                    let mut messages = rows
                        .iter()
                        .map(message_from_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    // RETURNING promises no order.
                    messages.sort_by_key(|m| m.id);
                    MailboxAnswer::Received(messages)
                }
                MailboxOp::Ack { recipient, ids, .. } => {
                    let acked = rows
                        .iter()
                        .map(|row| row.try_get::<i64, _>("id"))
                        .collect::<Result<std::collections::HashSet<_>, _>>()?;
                    let found = self.ack_refusals(ids, &acked, &self.pool).await?;
                    MailboxAnswer::Acked(ack_outcomes(recipient, ids, &acked, &found))
                }
            });
        }
        Ok(answers)
    }

    /// [`SqlStore::sqlite_batch`] of one write.
    async fn sqlite_one(&self, op: MailboxOp) -> Result<MailboxAnswer, StoreError> {
        self.sqlite_batch(std::slice::from_ref(&op))
            .await?
            .pop()
            .ok_or_else(|| StoreError::Conflict("a write answered nothing".into()))
    }
}

fn unexpected_answer() -> StoreError {
    StoreError::Conflict("a mailbox write answered another kind of write".into())
}

#[async_trait]
impl ActorStore for SqlStore {
    async fn write_batch(&self, ops: &[MailboxOp]) -> Result<Vec<MailboxAnswer>, StoreError> {
        let keyed = ops.iter().any(|op| {
            matches!(op, MailboxOp::Insert(m) if m.iter().any(|m| m.idempotency_key.is_some()))
        });
        if self.backend == Backend::Sqlite && !keyed {
            self.sqlite_batch(ops).await
        } else {
            apply_each(self, ops).await
        }
    }

    async fn insert_messages(
        &self,
        messages: &[NewMessage],
    ) -> Result<Vec<SentMessage>, StoreError> {
        if self.backend == Backend::Sqlite && messages.iter().all(|m| m.idempotency_key.is_none()) {
            return match self
                .sqlite_one(MailboxOp::Insert(messages.to_vec()))
                .await?
            {
                MailboxAnswer::Inserted(sent) => Ok(sent),
                _ => Err(unexpected_answer()),
            };
        }
        let mut tx = self.write_transaction().await?;
        let mut sent = Vec::with_capacity(messages.len());
        // Runs of messages without a key go in one statement each; a keyed one alone (it may
        // name an earlier message). Input order is kept, so ids follow it.
        let mut run: Vec<&NewMessage> = Vec::new();
        for m in messages {
            if m.idempotency_key.is_none() {
                run.push(m);
                if run.len() == MAX_ROWS_PER_INSERT {
                    insert_run(&mut tx, &run, &mut sent).await?;
                    run.clear();
                }
                continue;
            }
            if !run.is_empty() {
                insert_run(&mut tx, &run, &mut sent).await?;
                run.clear();
            }
            let inserted = bind_new_message(sqlx::query(INSERT_MESSAGE_SQL), m)
                .fetch_optional(&mut *tx)
                .await?;
            match inserted {
                Some(row) => sent.push(SentMessage {
                    message: stored_row(m, row.try_get("id")?),
                    duplicate: false,
                }),
                None => {
                    let sql = format!(
                        "SELECT {MESSAGE_COLUMNS} FROM actor_messages WHERE sender = $1 \
                         AND recipient = $2 AND idempotency_key = $3"
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(&m.sender)
                        .bind(&m.recipient)
                        .bind(&m.idempotency_key)
                        .fetch_one(&mut *tx)
                        .await?;
                    sent.push(SentMessage {
                        message: message_from_row(&row)?,
                        duplicate: true,
                    });
                }
            }
        }
        if !run.is_empty() {
            insert_run(&mut tx, &run, &mut sent).await?;
        }
        tx.commit().await?;
        Ok(sent)
    }

    async fn receive_messages(
        &self,
        recipient: &str,
        run_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        if self.backend == Backend::Sqlite {
            let op = MailboxOp::Receive {
                recipient: recipient.into(),
                run_id: run_id.into(),
                now_ms,
                limit,
            };
            return match self.sqlite_one(op).await? {
                MailboxAnswer::Received(messages) => Ok(messages),
                _ => Err(unexpected_answer()),
            };
        }
        let mut tx = self.write_transaction().await?;
        sqlx::query(sqlx::AssertSqlSafe(dead_letter_sql(Some("$1"), "$2")))
            .bind(recipient)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(RECEIVE_POSTGRES.as_str()))
            .bind(recipient)
            .bind(now_ms)
            .bind(i64::from(limit))
            .bind(run_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING promises no order.
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    async fn ack_messages(
        &self,
        recipient: &str,
        ids: &[i64],
        now_ms: i64,
    ) -> Result<Vec<AckOutcome>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if self.backend == Backend::Sqlite {
            let op = MailboxOp::Ack {
                recipient: recipient.into(),
                ids: ids.to_vec(),
                now_ms,
            };
            return match self.sqlite_one(op).await? {
                MailboxAnswer::Acked(outcomes) => Ok(outcomes),
                _ => Err(unexpected_answer()),
            };
        }
        let mut acked = std::collections::HashSet::new();
        let mut tx = self.write_transaction().await?;
        for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
            let marks = id_marks(chunk.len(), 3);
            let sql = format!(
                "UPDATE actor_messages SET state = 'acked', acked_at_ms = $2 \
                 WHERE recipient = $1 AND state = 'delivered' AND id IN ({marks}) RETURNING id"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(recipient)
                .bind(now_ms);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                acked.insert(row.try_get::<i64, _>("id")?);
            }
        }
        tx.commit().await?;
        let found = self.ack_refusals(ids, &acked, &self.pool).await?;
        Ok(ack_outcomes(recipient, ids, &acked, &found))
    }

    async fn get_message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM actor_messages WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    async fn list_messages(
        &self,
        filter: &MessageFilter<'_>,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM actor_messages WHERE ($1 = '' OR recipient = $1) \
             AND ($2 = '' OR state = $2) ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.recipient.unwrap_or_default())
            .bind(filter.state.map(MessageState::as_str).unwrap_or_default())
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(message_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn sweep_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(dead_letter_sql(None, "$1")))
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn requeue_message(
        &self,
        id: i64,
        now_ms: i64,
    ) -> Result<Option<MessageRow>, StoreError> {
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query(
            "UPDATE actor_messages SET state = 'pending', deliveries = 0, visible_at_ms = $2, \
             reason = 'requeued from the dead-letter list' WHERE id = $1 AND state = 'dead'",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM actor_messages WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let message = message_from_row(&row)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "message {id} is {}, not dead: only dead letters are requeued",
                message.state.as_str()
            )));
        }
        Ok(Some(message))
    }

    async fn insert_review(&self, review: &ReviewRow) -> Result<(), StoreError> {
        let options = serde_json::to_string(&review.options)
            .map_err(|e| StoreError::Conflict(format!("review options: {e}")))?;
        let result = sqlx::query(
            "INSERT INTO permission_reviews (id, actor_id, title, detail, request_key, options, \
             state, option_id, answered_by, created_at_ms, answered_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&review.id)
        .bind(&review.actor_id)
        .bind(&review.title)
        .bind(&review.detail)
        .bind(&review.request_key)
        .bind(options)
        .bind(review.state.as_str())
        .bind(&review.option_id)
        .bind(&review.answered_by)
        .bind(review.created_at_ms)
        .bind(review.answered_at_ms)
        .execute(&self.writer)
        .await;
        inserted(result, "permission review", &review.id)
    }

    async fn get_review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        let sql = format!("SELECT {REVIEW_COLUMNS} FROM permission_reviews WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(review_from_row).transpose()?)
    }

    async fn list_reviews(
        &self,
        pending_only: bool,
        actor_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM permission_reviews WHERE ($1 = '' OR state = $1) \
             AND ($2 = '' OR actor_id = $2) ORDER BY created_at_ms DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(if pending_only {
                ReviewState::Pending.as_str()
            } else {
                ""
            })
            .bind(actor_id.unwrap_or_default())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(review_from_row).collect::<Result<_, _>>()?)
    }

    async fn answer_review(
        &self,
        answer: &ReviewRow,
        grant: Option<&GrantRow>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let done = sqlx::query(
            "UPDATE permission_reviews SET state = $2, option_id = $3, answered_by = $4, \
             answered_at_ms = $5 WHERE id = $1 AND state = 'pending'",
        )
        .bind(&answer.id)
        .bind(answer.state.as_str())
        .bind(&answer.option_id)
        .bind(&answer.answered_by)
        .bind(answer.answered_at_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(grant) = grant {
            sqlx::query(
                "INSERT INTO permission_grants (actor_id, request_key, option_id, review_id, \
                 created_at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (actor_id, request_key) \
                 DO UPDATE SET option_id = excluded.option_id, review_id = excluded.review_id, \
                 created_at_ms = excluded.created_at_ms",
            )
            .bind(&grant.actor_id)
            .bind(&grant.request_key)
            .bind(&grant.option_id)
            .bind(&grant.review_id)
            .bind(grant.created_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn get_grant(
        &self,
        actor_id: &str,
        request_key: &str,
    ) -> Result<Option<GrantRow>, StoreError> {
        let row = sqlx::query(
            "SELECT actor_id, request_key, option_id, review_id, created_at_ms \
             FROM permission_grants WHERE actor_id = $1 AND request_key = $2",
        )
        .bind(actor_id)
        .bind(request_key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(GrantRow {
            actor_id: row.try_get("actor_id")?,
            request_key: row.try_get("request_key")?,
            option_id: row.try_get("option_id")?,
            review_id: row.try_get("review_id")?,
            created_at_ms: row.try_get("created_at_ms")?,
        }))
    }

    async fn insert_trigger(&self, trigger: &TriggerRow) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO time_triggers (id, actor_id, schedule, payload, next_due_ms, fired, \
             last_fired_ms, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&trigger.id)
        .bind(&trigger.actor_id)
        .bind(&trigger.schedule)
        .bind(&trigger.payload)
        .bind(trigger.next_due_ms)
        .bind(trigger.fired)
        .bind(trigger.last_fired_ms)
        .bind(trigger.created_at_ms)
        .execute(&self.writer)
        .await;
        inserted(result, "time trigger", &trigger.id)
    }

    async fn list_triggers(&self, actor_id: Option<&str>) -> Result<Vec<TriggerRow>, StoreError> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM time_triggers WHERE ($1 = '' OR actor_id = $1) \
             ORDER BY created_at_ms, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(actor_id.unwrap_or_default())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(trigger_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRow>, StoreError> {
        let sql = format!("SELECT {TRIGGER_COLUMNS} FROM time_triggers WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(trigger_from_row).transpose()?)
    }

    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM time_triggers WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn due_triggers(&self, now_ms: i64, limit: u32) -> Result<Vec<TriggerRow>, StoreError> {
        let sql = format!(
            "SELECT {TRIGGER_COLUMNS} FROM time_triggers WHERE next_due_ms <= $1 \
             ORDER BY next_due_ms, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(trigger_from_row)
            .collect::<Result<_, _>>()?)
    }

    async fn fire_trigger(
        &self,
        trigger_id: &str,
        slot_ms: i64,
        next_due_ms: i64,
        message: &NewMessage,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_transaction().await?;
        let moved = sqlx::query(
            "UPDATE time_triggers SET next_due_ms = $3, fired = fired + 1, last_fired_ms = $2 \
             WHERE id = $1 AND next_due_ms = $2",
        )
        .bind(trigger_id)
        .bind(slot_ms)
        .bind(next_due_ms)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        bind_new_message(sqlx::query(INSERT_MESSAGE_SQL), message)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}
