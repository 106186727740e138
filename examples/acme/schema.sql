-- Acme's CRM: a workspace-per-tenant CRM whose tables look nothing like the demo's.
--
-- Another schema name, quoted camelCase columns, composite fields flattened into several columns
-- ("nameFirstName", "phonesPrimaryPhoneCallingCode" …), extra emails as a jsonb array, custom
-- fields in a jsonb document, money as micros, and two soft-delete styles ("deletedAt" on people,
-- "isDeleted" on marketing preferences).

CREATE SCHEMA IF NOT EXISTS "workspace_7f3a";

CREATE TABLE "workspace_7f3a"."person" (
    "id"                            uuid PRIMARY KEY,
    "nameFirstName"                 text NOT NULL DEFAULT '',
    "nameLastName"                  text NOT NULL DEFAULT '',
    "emailsPrimaryEmail"            text NOT NULL DEFAULT '',
    "emailsAdditionalEmails"        jsonb,                     -- ["old@x.com", "work@y.com"]
    "phonesPrimaryPhoneNumber"      text NOT NULL DEFAULT '',  -- national part: '7700 900201'
    "phonesPrimaryPhoneCallingCode" text NOT NULL DEFAULT '',  -- '+44'
    "addressAddressStreet1"         text,
    "addressAddressStreet2"         text,
    "addressAddressCity"            text,
    "addressAddressState"           text,
    "addressAddressPostcode"        text,
    "addressAddressCountry"         text,                      -- 'United Kingdom'
    "jobTitle"                      text NOT NULL DEFAULT '',
    "customFields"                  jsonb NOT NULL DEFAULT '{}', -- {"birthday": "1990-04-12", …}
    "lifetimeValueAmountMicros"     bigint,                    -- currency composite: micros …
    "lifetimeValueCurrencyCode"     text,                      -- … and its currency
    "position"                      double precision,
    "createdAt"                     timestamptz NOT NULL DEFAULT now(),
    "updatedAt"                     timestamptz NOT NULL DEFAULT now(),
    "deletedAt"                     timestamptz
);

-- One row per person, written by the newsletter tool; removal sets "isDeleted".
CREATE TABLE "workspace_7f3a"."marketingPreference" (
    "id"           uuid PRIMARY KEY,
    "personId"     uuid NOT NULL REFERENCES "workspace_7f3a"."person" ("id"),
    "emailOptIn"   boolean NOT NULL DEFAULT false,
    "smsOptIn"     char(1) NOT NULL DEFAULT 'N',               -- 'Y' / 'N'
    "changedAt"    timestamp(3) NOT NULL DEFAULT now(),        -- ms precision, no zone
    "isDeleted"    boolean NOT NULL DEFAULT false
);

ALTER TABLE "workspace_7f3a"."person" REPLICA IDENTITY FULL;
ALTER TABLE "workspace_7f3a"."marketingPreference" REPLICA IDENTITY FULL;
