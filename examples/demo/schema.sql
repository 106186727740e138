-- unified-profile demo: a CRM and a loyalty platform, each in its own schema.
--
-- The two sources are separate systems; they may live in two databases (run this file in each:
-- every source captures only the tables its config lists) or in one database with both schemas.
-- Tables that carry identifiers need REPLICA IDENTITY FULL so that updates and deletes carry the
-- whole old row; the config's `set_replica_identity_full = true` lets the connector set it.

-- ---------------------------------------------------------------------------------------------
-- CRM
-- ---------------------------------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS crm;

CREATE TYPE crm.lifecycle_stage AS ENUM ('lead', 'prospect', 'customer', 'churned');

CREATE TABLE crm.customers (
    id                bigint PRIMARY KEY,
    first_name        text,
    last_name         text,
    email             text,
    birth_date        date,
    owner_email       text,                      -- the account manager
    lifecycle_stage   crm.lifecycle_stage NOT NULL DEFAULT 'lead',
    last_contacted_at timestamp,                 -- wall-clock UTC, no zone (MicroTimestamp)
    notes             text,                      -- free text, long values are TOASTed
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz                -- soft delete: the CRM's "trash"
);

-- One row of contact details per customer, edited on its own screen.
CREATE TABLE crm.contact_details (
    customer_id   bigint PRIMARY KEY REFERENCES crm.customers (id),
    phone         text,                          -- typed by hand: '07700 900123', '+44 …'
    address_line1 text,
    address_line2 text,
    city          text,
    region        text,
    postal_code   text,
    country_code  char(2),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Marketing consent as the CRM's preference centre records it.
CREATE TABLE crm.consents (
    customer_id        bigint PRIMARY KEY REFERENCES crm.customers (id),
    email_opt_in       boolean NOT NULL DEFAULT false,
    email_opt_in_at    timestamptz,
    sms_opt_in         boolean NOT NULL DEFAULT false,
    sms_opt_in_at      timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Service desk: one row per case, updated as it moves along.
CREATE TABLE crm.service_cases (
    case_id       bigint PRIMARY KEY,
    customer_id   bigint NOT NULL REFERENCES crm.customers (id),
    category      text NOT NULL,                 -- 'complaint', 'question', 'return'
    subject       text NOT NULL,
    status        text NOT NULL DEFAULT 'open',  -- 'open', 'resolved'
    opened_at     timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Loyalty platform
-- ---------------------------------------------------------------------------------------------
CREATE SCHEMA IF NOT EXISTS loyalty;

CREATE TYPE loyalty.member_status AS ENUM ('active', 'suspended', 'closed');

-- Reference data: not captured, the config maps tier codes to names.
CREATE TABLE loyalty.tiers (
    code       text PRIMARY KEY,
    name       text NOT NULL,
    min_points integer NOT NULL
);

CREATE TABLE loyalty.members (
    member_id         text PRIMARY KEY,                -- 'LM-000101'
    crm_customer_id   bigint,                          -- set when the member linked their account
    email             text,
    mobile            text,
    given_name        text,
    family_name       text,
    tier_code         text NOT NULL REFERENCES loyalty.tiers (code),
    points_balance    integer NOT NULL DEFAULT 0,
    lifetime_points   bigint NOT NULL DEFAULT 0,
    lifetime_spend    numeric(12, 2) NOT NULL DEFAULT 0, -- base64 Decimal in Debezium events
    status            loyalty.member_status NOT NULL DEFAULT 'active',
    marketing_opt_in  char(1) NOT NULL DEFAULT 'N',    -- 'Y' / 'N', as the platform stores it
    push_opt_in       boolean NOT NULL DEFAULT false,
    consent_at        timestamptz,
    enrolled_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE loyalty.points_ledger (
    entry_id    bigint PRIMARY KEY,
    member_id   text NOT NULL REFERENCES loyalty.members (member_id),
    points      integer NOT NULL,                    -- earned (+) or redeemed (-)
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Rewards members spent points on (the ledger holds the matching negative entry).
CREATE TABLE loyalty.redemptions (
    redemption_id bigint PRIMARY KEY,
    member_id     text NOT NULL REFERENCES loyalty.members (member_id),
    reward_code   text NOT NULL,
    reward_name   text NOT NULL,
    points        integer NOT NULL,
    status        text NOT NULL DEFAULT 'fulfilled',
    redeemed_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE crm.customers REPLICA IDENTITY FULL;
ALTER TABLE crm.contact_details REPLICA IDENTITY FULL;
ALTER TABLE crm.consents REPLICA IDENTITY FULL;
ALTER TABLE crm.service_cases REPLICA IDENTITY FULL;
ALTER TABLE loyalty.members REPLICA IDENTITY FULL;
ALTER TABLE loyalty.points_ledger REPLICA IDENTITY FULL;
ALTER TABLE loyalty.redemptions REPLICA IDENTITY FULL;
