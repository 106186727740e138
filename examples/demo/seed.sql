-- Demo seed data. Fixed timestamps, so every run maps to the same profiles.
--
-- People worth following:
--   Sally Smith   CRM 1 + member LM-000101 (linked by crm_customer_id, email differs in case only)
--   Tom Brown     CRM 2 + member LM-000102 (no link: they match on email)
--   Priya Patel   CRM 3 + member LM-000104 (linked); consent revoked in loyalty after a CRM grant
--   the Joneses   CRM 4 and 5 share a household email: two people, one recorded conflict
--   Dan Deleted   CRM 6 is in the CRM's trash (soft-deleted)
--   Noor Khan     CRM 7's email is the placeholder 'n/a' (blocked); phone only
--   Ola Nowak     member LM-000103 only, no CRM record
--   Ben Closed    member LM-000105, closed account
--
-- The generated demo population (unified_profile.server.demo.people) adds thousands more, with
-- ids from 1001 up.

-- ---------------------------------------------------------------------------------------------
-- CRM
-- ---------------------------------------------------------------------------------------------
INSERT INTO crm.customers
    (id, first_name, last_name, email, birth_date, owner_email, lifecycle_stage,
     last_contacted_at, notes, created_at, updated_at, deleted_at)
VALUES
    (1, 'Sally', 'Smith', 'Sally.Smith@example.com', '1986-04-12', 'alice@crm.example', 'customer',
     '2025-01-20 09:15:00', 'Prefers phone calls.', '2023-02-01 10:00:00+00', '2025-01-20 09:16:00+00', NULL),
    (2, 'Tom', 'Brown', 'tom.brown@example.com', NULL, 'alice@crm.example', 'prospect',
     NULL, NULL, '2024-06-11 08:30:00+00', '2024-11-02 14:00:00+00', NULL),
    (3, 'Priya', 'Patel', 'priya.patel@example.org', '1992-11-30', 'bob@crm.example', 'customer',
     '2024-12-05 16:40:00', NULL, '2022-09-14 12:00:00+00', '2024-12-05 16:41:00+00', NULL),
    (4, 'John', 'Jones', 'the.joneses@example.net', '1970-01-08', 'bob@crm.example', 'customer',
     NULL, 'Household account, shares an email with Mary.', '2021-03-03 09:00:00+00', '2024-03-03 09:00:00+00', NULL),
    (5, 'Mary', 'Jones', 'The.Joneses@example.net ', '1972-07-19', 'bob@crm.example', 'customer',
     NULL, NULL, '2021-03-03 09:05:00+00', '2024-03-03 09:05:00+00', NULL),
    (6, 'Dan', 'Deleted', 'dan@example.com', NULL, NULL, 'churned',
     NULL, NULL, '2020-01-01 00:00:00+00', '2024-08-01 00:00:00+00', '2024-08-01 00:00:00+00'),
    (7, 'Noor', 'Khan', 'n/a', NULL, 'alice@crm.example', 'lead',
     NULL, NULL, '2025-01-02 11:00:00+00', '2025-01-02 11:00:00+00', NULL);

INSERT INTO crm.contact_details
    (customer_id, phone, address_line1, address_line2, city, region, postal_code, country_code, updated_at)
VALUES
    (1, '07700 900101', '12 Market Street', 'Flat 3', 'Leeds', 'West Yorkshire', 'LS1 6DT', 'GB', '2024-05-01 10:00:00+00'),
    (2, '+44 7700 900102', '4 Mill Lane', NULL, 'York', NULL, 'YO1 7HH', 'GB', '2024-06-11 08:30:00+00'),
    (3, '(0113) 496 0003', '88 Park Row', NULL, 'Leeds', 'West Yorkshire', 'LS1 5HD', 'GB', '2024-12-05 16:41:00+00'),
    (4, '0113 496 0004', '1 Chapel Yard', NULL, 'Otley', NULL, 'LS21 3AD', 'GB', '2021-03-03 09:00:00+00'),
    (7, '07700 900107', NULL, NULL, NULL, NULL, NULL, NULL, '2025-01-02 11:00:00+00');

INSERT INTO crm.consents
    (customer_id, email_opt_in, email_opt_in_at, sms_opt_in, sms_opt_in_at, updated_at)
VALUES
    (1, true,  '2023-02-01 10:00:00+00', false, NULL,                     '2023-02-01 10:00:00+00'),
    (2, false, NULL,                     false, NULL,                     '2024-06-11 08:30:00+00'),
    (3, true,  '2022-09-14 12:00:00+00', true,  '2022-09-14 12:00:00+00', '2022-09-14 12:00:00+00');

INSERT INTO crm.service_cases (case_id, customer_id, category, subject, status, opened_at, updated_at) VALUES
    (1, 2, 'complaint', 'Late delivery', 'resolved', '2024-11-01 10:00:00+00', '2024-11-02 14:00:00+00');

-- ---------------------------------------------------------------------------------------------
-- Loyalty platform
-- ---------------------------------------------------------------------------------------------
INSERT INTO loyalty.tiers (code, name, min_points) VALUES
    ('BRZ', 'Bronze', 0),
    ('SLV', 'Silver', 1000),
    ('GLD', 'Gold', 5000),
    ('PLT', 'Platinum', 20000);

INSERT INTO loyalty.members
    (member_id, crm_customer_id, email, mobile, given_name, family_name, tier_code,
     points_balance, lifetime_points, lifetime_spend, status, marketing_opt_in, push_opt_in,
     consent_at, enrolled_at, updated_at)
VALUES
    ('LM-000101', 1, 'sally.smith@example.com', '+447700900101', 'Sal', 'Smith', 'GLD',
     5230, 12840, 1873.45, 'active', 'Y', true,
     '2023-03-01 12:00:00+00', '2023-03-01 12:00:00+00', '2025-01-18 18:02:11+00'),
    ('LM-000102', NULL, 'TOM.BROWN@example.com', NULL, 'Tom', 'Brown', 'BRZ',
     120, 120, 35.00, 'active', 'N', false,
     NULL, '2024-10-30 09:00:00+00', '2024-10-30 09:00:00+00'),
    ('LM-000103', NULL, 'ola.nowak@example.pl', '07700 900103', 'Ola', 'Nowak', 'SLV',
     1460, 2210, 412.99, 'active', 'Y', false,
     '2024-02-10 15:30:00+00', '2024-02-10 15:30:00+00', '2024-12-24 10:05:00+00'),
    ('LM-000104', 3, 'priya.patel@example.org', NULL, 'Priya', 'Patel', 'SLV',
     980, 3400, 640.10, 'active', 'N', true,
     '2025-01-10 08:00:00+00', '2022-10-01 10:00:00+00', '2025-01-10 08:00:00+00'),
    ('LM-000105', NULL, 'ben.closed@example.com', NULL, 'Ben', 'Closed', 'BRZ',
     0, 300, 80.00, 'closed', 'N', false,
     NULL, '2021-05-05 05:05:00+00', '2023-12-31 23:59:59+00');

INSERT INTO loyalty.points_ledger (entry_id, member_id, points, reason, created_at) VALUES
    (1, 'LM-000101', 500, 'purchase', '2024-12-20 13:10:00+00'),
    (2, 'LM-000101', -1000, 'reward: free coffee for a month', '2025-01-18 18:02:11+00'),
    (3, 'LM-000103', 210, 'purchase', '2024-12-24 10:05:00+00'),
    (4, 'LM-000104', 150, 'purchase', '2025-01-09 17:45:00+00'),
    (5, 'LM-000102', 120, 'welcome bonus', '2024-10-30 09:00:00+00');

INSERT INTO loyalty.redemptions (redemption_id, member_id, reward_code, reward_name, points, status, redeemed_at) VALUES
    (1, 'LM-000101', 'COFFEE30', 'Free coffee for a month', 1000, 'fulfilled', '2025-01-18 18:02:11+00');
