//! Assisted-mode suggestions in SQLite (`suggestions` table): created from the hub's own predictions,
//! listed, answered and marked read through the legacy notification routes.

use std::path::Path;

use chrono::{Local, TimeZone};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::features::Target;
use super::LearningError;

/// One stored suggestion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub id: i64,
    pub created_ms: i64,
    pub target: Target,
    pub prediction: i64,
    pub probability: f64,
    pub model_used: String,
    pub read: bool,
    /// `None` until answered; `Some(true)` when the user accepted it.
    pub answer: Option<bool>,
}

impl Suggestion {
    /// The payload published on `smarthub/suggestion` (firmware contract `suggestion` schema).
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "item": self.target.as_str(),
            "prediction": self.prediction,
            "probability": self.probability.clamp(0.0, 1.0),
            "model_used": self.model_used,
            "timestamp": Local
                .timestamp_millis_opt(self.created_ms)
                .single()
                .unwrap_or_else(Local::now)
                .to_rfc3339(),
        })
    }

    /// What the legacy app shows (keys spelled as the app expects them).
    pub fn legacy_notification(&self) -> serde_json::Value {
        let date = Local
            .timestamp_millis_opt(self.created_ms)
            .single()
            .unwrap_or_else(Local::now)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        serde_json::json!({
            "type": "ML",
            "id": self.id,
            "title": "ML",
            "body": self.body(),
            "image": null,
            "date": date,
            "itemControlled": self.target.legacy_item(),
            "predectedClass": self.prediction.to_string(),
        })
    }

    fn body(&self) -> String {
        let pct = (self.probability * 100.0).round();
        match self.target {
            Target::Light => format!(
                "Turn the light {}? ({pct}% sure)",
                if self.prediction == 1 { "on" } else { "off" }
            ),
            Target::Tv if self.prediction == 0 => format!("Turn the TV off? ({pct}% sure)"),
            Target::Tv => {
                let name = crate::home::channel_name(self.prediction as u32);
                if name.is_empty() {
                    format!(
                        "Switch the TV to channel {}? ({pct}% sure)",
                        self.prediction
                    )
                } else {
                    format!(
                        "Switch the TV to channel {} ({name})? ({pct}% sure)",
                        self.prediction
                    )
                }
            }
            Target::Fan => format!("Set the fan to level {}? ({pct}% sure)", self.prediction),
        }
    }
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Suggestion> {
    let target: String = r.get(2)?;
    Ok(Suggestion {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        target: Target::parse(&target).unwrap_or(Target::Light),
        prediction: r.get(3)?,
        probability: r.get(4)?,
        model_used: r.get(5)?,
        read: r.get(6)?,
        answer: r.get(7)?,
    })
}

const COLUMNS: &str = "id, created_ms, target, prediction, probability, model_used, read, answer";

/// Stores a new suggestion.
pub fn create(
    db_path: &Path,
    target: Target,
    prediction: i64,
    probability: f64,
    model_used: &str,
    now_ms: i64,
) -> Result<Suggestion, LearningError> {
    let conn = crate::store::open_migrated(db_path)?;
    conn.execute(
        "INSERT INTO suggestions (created_ms, target, prediction, probability, model_used) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms, target.as_str(), prediction, probability, model_used],
    )?;
    let id = conn.last_insert_rowid();
    Ok(get(&conn, id)?.expect("the row just inserted"))
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Suggestion>, LearningError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM suggestions WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

/// The newest `limit` suggestions, newest first.
pub fn list(conn: &Connection, limit: usize) -> Result<Vec<Suggestion>, LearningError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM suggestions ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit as i64], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks a suggestion read; with `answer`, records it too (the first answer stays). Returns the
/// suggestion as it was before, or `None` when there is no such id.
pub fn mark(
    db_path: &Path,
    id: i64,
    answer: Option<bool>,
    now_ms: i64,
) -> Result<Option<Suggestion>, LearningError> {
    let conn = crate::store::open_migrated(db_path)?;
    let Some(before) = get(&conn, id)? else {
        return Ok(None);
    };
    conn.execute(
        "UPDATE suggestions SET read = 1,
         answer = COALESCE(answer, ?2),
         answered_ms = CASE WHEN answer IS NULL AND ?2 IS NOT NULL THEN ?3 ELSE answered_ms END
         WHERE id = ?1",
        params![id, answer, now_ms],
    )?;
    Ok(Some(before))
}
