-- The schema SQLModel.metadata.create_all made on SQLite before migrations existed (commit 6838f9d):
-- sqlite_master's statements in the order they ran. Frozen: tests build "a database made by an older
-- version" from it, however storage/models.py changes later.

CREATE TABLE users (
	id BIGINT NOT NULL,
	name VARCHAR NOT NULL,
	tier VARCHAR,
	mode VARCHAR NOT NULL,
	banned BOOLEAN NOT NULL,
	ban_reason VARCHAR,
	blocked_until DATETIME,
	preferences JSON NOT NULL,
	suffix VARCHAR NOT NULL,
	remix BOOLEAN NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE banned_words (
	term VARCHAR(100) NOT NULL,
	added_by BIGINT NOT NULL,
	at DATETIME NOT NULL,
	PRIMARY KEY (term)
);

CREATE TABLE moderation_hits (
	id INTEGER NOT NULL,
	user_id BIGINT NOT NULL,
	term VARCHAR NOT NULL,
	at DATETIME NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_moderation_hits_user_id ON moderation_hits (user_id);

CREATE INDEX ix_moderation_hits_at ON moderation_hits (at);

CREATE TABLE quota_ledger (
	id INTEGER NOT NULL,
	user_id BIGINT NOT NULL,
	job_id VARCHAR(32),
	kind VARCHAR NOT NULL,
	seconds FLOAT NOT NULL,
	period_start DATETIME NOT NULL,
	actor_id BIGINT,
	at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT one_entry_per_job_and_kind UNIQUE (job_id, kind)
);

CREATE INDEX ix_quota_ledger_user_id ON quota_ledger (user_id);

CREATE INDEX ix_quota_ledger_period_start ON quota_ledger (period_start);

CREATE INDEX ix_quota_ledger_job_id ON quota_ledger (job_id);

CREATE TABLE audit_log (
	id INTEGER NOT NULL,
	actor_id BIGINT NOT NULL,
	action VARCHAR NOT NULL,
	target VARCHAR NOT NULL,
	details JSON NOT NULL,
	at DATETIME NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_audit_log_actor_id ON audit_log (actor_id);

CREATE INDEX ix_audit_log_at ON audit_log (at);

CREATE TABLE jobs (
	id VARCHAR(32) NOT NULL,
	user_id BIGINT NOT NULL,
	kind VARCHAR NOT NULL,
	state VARCHAR(10) NOT NULL,
	attempts INTEGER NOT NULL,
	error VARCHAR,
	guild_id BIGINT,
	channel_id BIGINT,
	message_id BIGINT,
	application_id BIGINT,
	interaction_token VARCHAR,
	prompt VARCHAR NOT NULL,
	negative_prompt VARCHAR NOT NULL,
	params JSON NOT NULL,
	parent_job_id VARCHAR(32),
	parent_index INTEGER,
	operation VARCHAR NOT NULL,
	engine VARCHAR,
	model VARCHAR,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	steps INTEGER NOT NULL,
	seed BIGINT NOT NULL,
	mode VARCHAR NOT NULL,
	tier VARCHAR NOT NULL,
	priority INTEGER NOT NULL,
	estimate_seconds FLOAT NOT NULL,
	engine_seconds FLOAT,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	state_since DATETIME NOT NULL,
	finished_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(parent_job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE INDEX ix_jobs_kind ON jobs (kind);

CREATE INDEX ix_jobs_user_id ON jobs (user_id);

CREATE INDEX ix_jobs_created_at ON jobs (created_at);

CREATE TABLE job_transitions (
	id INTEGER NOT NULL,
	job_id VARCHAR(32) NOT NULL,
	from_state VARCHAR(10),
	to_state VARCHAR(10) NOT NULL,
	attempt INTEGER NOT NULL,
	note VARCHAR,
	at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_job_transitions_job_id ON job_transitions (job_id);

CREATE TABLE favourites (
	user_id BIGINT NOT NULL,
	job_id VARCHAR(32) NOT NULL,
	at DATETIME NOT NULL,
	PRIMARY KEY (user_id, job_id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE TABLE job_images (
	id INTEGER NOT NULL,
	job_id VARCHAR(32) NOT NULL,
	"index" INTEGER NOT NULL,
	"key" VARCHAR(64) NOT NULL,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	seed BIGINT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_job_images_job_id ON job_images (job_id);
