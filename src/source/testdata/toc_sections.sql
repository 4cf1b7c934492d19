--
-- PostgreSQL database dump
--

\restrict lJeCJtztbH5ZN6OgkX7PgsuLJn9nAKwYHZsiFakMjk711QzRaWytQXH6grc0y1I

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: app; Type: SCHEMA; Schema: -; Owner: app_owner
--

CREATE SCHEMA app;


ALTER SCHEMA app OWNER TO app_owner;

--
-- Name: reports; Type: SCHEMA; Schema: -; Owner: Report Owner
--

CREATE SCHEMA reports;


ALTER SCHEMA reports OWNER TO "Report Owner";

--
-- Name: touch(); Type: FUNCTION; Schema: app; Owner: app_owner
--

CREATE FUNCTION app.touch() RETURNS integer
    LANGUAGE sql
    AS $$select 1$$;


ALTER FUNCTION app.touch() OWNER TO app_owner;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: accounts; Type: TABLE; Schema: app; Owner: app_owner
--

CREATE TABLE app.accounts (
    id integer NOT NULL,
    name text,
    secret text
);


ALTER TABLE app.accounts OWNER TO app_owner;

--
-- Name: public_accounts; Type: VIEW; Schema: app; Owner: app_owner
--

CREATE VIEW app.public_accounts AS
 SELECT accounts.id,
    accounts.name
   FROM app.accounts;


ALTER TABLE app.public_accounts OWNER TO app_owner;

--
-- Name: daily; Type: TABLE; Schema: reports; Owner: Report Owner
--

CREATE TABLE reports.daily (
    d date,
    n integer
);


ALTER TABLE reports.daily OWNER TO "Report Owner";

--
-- Name: 424242; Type: BLOB; Schema: -; Owner: writer
--

SELECT pg_catalog.lo_create('424242');


ALTER LARGE OBJECT 424242 OWNER TO writer;

--
-- Name: accounts accounts_pkey; Type: CONSTRAINT; Schema: app; Owner: app_owner
--

ALTER TABLE ONLY app.accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);


--
-- Name: accounts; Type: ROW SECURITY; Schema: app; Owner: app_owner
--

ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;

--
-- Name: accounts own_rows; Type: POLICY; Schema: app; Owner: app_owner
--

CREATE POLICY own_rows ON app.accounts FOR SELECT TO readers USING ((id > 10));


--
-- Name: SCHEMA app; Type: ACL; Schema: -; Owner: app_owner
--

GRANT USAGE ON SCHEMA app TO readers;


--
-- Name: SCHEMA reports; Type: ACL; Schema: -; Owner: Report Owner
--

GRANT USAGE ON SCHEMA reports TO analyst;


--
-- Name: FUNCTION touch(); Type: ACL; Schema: app; Owner: app_owner
--

REVOKE ALL ON FUNCTION app.touch() FROM PUBLIC;
GRANT ALL ON FUNCTION app.touch() TO analyst;


--
-- Name: TABLE accounts; Type: ACL; Schema: app; Owner: app_owner
--

REVOKE ALL ON TABLE app.accounts FROM app_owner;
GRANT SELECT,INSERT,REFERENCES,TRIGGER,TRUNCATE,UPDATE ON TABLE app.accounts TO app_owner;
GRANT SELECT,INSERT,UPDATE ON TABLE app.accounts TO writer;


--
-- Name: COLUMN accounts.id; Type: ACL; Schema: app; Owner: app_owner
--

GRANT SELECT(id) ON TABLE app.accounts TO readers;


--
-- Name: COLUMN accounts.name; Type: ACL; Schema: app; Owner: app_owner
--

GRANT SELECT(name) ON TABLE app.accounts TO readers;


--
-- Name: TABLE public_accounts; Type: ACL; Schema: app; Owner: app_owner
--

GRANT SELECT ON TABLE app.public_accounts TO PUBLIC;


--
-- Name: TABLE daily; Type: ACL; Schema: reports; Owner: Report Owner
--

GRANT SELECT ON TABLE reports.daily TO analyst WITH GRANT OPTION;
SET SESSION AUTHORIZATION analyst;
GRANT SELECT ON TABLE reports.daily TO writer;
RESET SESSION AUTHORIZATION;


--
-- Name: LARGE OBJECT 424242; Type: ACL; Schema: -; Owner: writer
--

GRANT SELECT ON LARGE OBJECT 424242 TO analyst;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: app; Owner: app_owner
--

ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA app GRANT SELECT ON TABLES  TO readers;


--
-- Name: DEFAULT PRIVILEGES FOR FUNCTIONS; Type: DEFAULT ACL; Schema: -; Owner: app_owner
--

ALTER DEFAULT PRIVILEGES FOR ROLE app_owner REVOKE ALL ON FUNCTIONS  FROM PUBLIC;


--
-- PostgreSQL database dump complete
--

\unrestrict lJeCJtztbH5ZN6OgkX7PgsuLJn9nAKwYHZsiFakMjk711QzRaWytQXH6grc0y1I

