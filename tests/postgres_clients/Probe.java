// What pgjdbc (the driver of DBeaver and Metabase) reads from datx: typed parameters,
// PostgreSQL's functions and types, one backend pid per session, and a cancel. Prints one
// line per case, `name<TAB>value`; a failure prints `name<TAB>ERROR sqlstate message`.
import java.math.BigDecimal;
import java.sql.*;

public class Probe {
    interface Case { Object run(Connection c) throws Exception; }

    static void report(Connection c, String name, Case body) {
        try {
            System.out.println(name + "\t" + body.run(c));
        } catch (SQLException e) {
            System.out.println(name + "\tERROR " + e.getSQLState() + " " + e.getMessage().replace('\n', ' '));
        } catch (Exception e) {
            System.out.println(name + "\tERROR " + e);
        }
    }

    static Object one(PreparedStatement s) throws SQLException {
        try (ResultSet r = s.executeQuery()) {
            r.next();
            return r.getObject(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2];
        try (Connection c = DriverManager.getConnection(url, user, password)) {
            report(c, "double_times_two", k -> {
                PreparedStatement s = k.prepareStatement("SELECT ? * 2");
                s.setDouble(1, 1.5);
                return one(s);
            });
            report(c, "below_a_float", k -> {
                PreparedStatement s = k.prepareStatement("SELECT count(*) FROM orders WHERE sale_amount < ?");
                s.setDouble(1, 40000.5);
                return one(s);
            });
            report(c, "below_a_float_literal", k -> one(k.prepareStatement(
                "SELECT count(*) FROM orders WHERE sale_amount < 40000.5")));
            report(c, "set_date", k -> {
                PreparedStatement s = k.prepareStatement("SELECT count(*) FROM orders WHERE date >= ?");
                s.setDate(1, Date.valueOf("2023-02-02"));
                return one(s);
            });
            report(c, "set_date_literal", k -> one(k.prepareStatement(
                "SELECT count(*) FROM orders WHERE date >= DATE '2023-02-02'")));
            report(c, "set_int_plus_one", k -> {
                PreparedStatement s = k.prepareStatement("SELECT ? + 1");
                s.setInt(1, 41);
                return one(s);
            });
            report(c, "set_boolean", k -> {
                PreparedStatement s = k.prepareStatement("SELECT NOT ?");
                s.setBoolean(1, false);
                return one(s);
            });
            report(c, "to_char", k -> one(k.prepareStatement(
                "SELECT to_char(TIMESTAMPTZ '2026-03-05 14:07:09+00', 'FMDay, FMDD Mon YYYY HH24:MI')")));
            report(c, "at_time_zone", k -> {
                try (ResultSet r = k.prepareStatement(
                        "SELECT TIMESTAMPTZ '2026-11-30 23:30:00+00' AT TIME ZONE 'Europe/Zurich'").executeQuery()) {
                    r.next();
                    return r.getMetaData().getColumnTypeName(1) + "," + r.getString(1);
                }
            });
            report(c, "now_type", k -> {
                try (ResultSet r = k.prepareStatement("SELECT now(), CAST('2026-01-01 10:00:00+02' AS timestamptz)").executeQuery()) {
                    ResultSetMetaData m = r.getMetaData();
                    return m.getColumnTypeName(1) + "," + m.getColumnTypeName(2);
                }
            });
            report(c, "decimal", k -> {
                try (ResultSet r = k.prepareStatement("SELECT CAST(-1234.5678 AS DECIMAL(10,4))").executeQuery()) {
                    r.next();
                    BigDecimal d = r.getBigDecimal(1);
                    return r.getMetaData().getColumnTypeName(1) + "," + d.toPlainString();
                }
            });
            report(c, "backend_pids", k -> {
                try (Connection other = DriverManager.getConnection(url, user, password)) {
                    int mine = k.unwrap(org.postgresql.PGConnection.class).getBackendPID();
                    int theirs = other.unwrap(org.postgresql.PGConnection.class).getBackendPID();
                    Object said = one(k.prepareStatement("SELECT pg_backend_pid()"));
                    return (mine != theirs) + "," + said.equals(mine);
                }
            });
            report(c, "cancel", k -> {
                Statement s = k.createStatement();
                Thread canceller = new Thread(() -> {
                    try { Thread.sleep(1000); s.cancel(); } catch (Exception e) { }
                });
                canceller.start();
                try {
                    s.executeQuery("SELECT sum(value) FROM range(1000000000000)");
                    return "finished";
                } catch (SQLException e) {
                    canceller.join();
                    return e.getSQLState();
                }
            });
            report(c, "after_cancel", k -> one(k.prepareStatement("SELECT 41 + 1")));
        }
    }
}
