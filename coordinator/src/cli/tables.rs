//! The CLI's text tables, by comfy-table: column widths by each cell's display width (a
//! wide or combining character counts as it shows), no borders, two spaces between
//! columns, no trailing blanks — the layout `certs`, `hosts`, `tokens`, `audit` and
//! `operators` always had, without hand-padding.

use comfy_table::{presets, Table};

/// A plain left-aligned text table, one line per row, ending in a newline.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_header(header.to_vec())
        .add_rows(rows.iter().map(|r| r.iter().map(String::as_str)));
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t.trim_fmt() + "\n"
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn widths_are_display_widths_and_no_line_ends_in_blanks() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["日本".into(), "ok".into()],
                vec!["web-1".into(), String::new()],
            ],
        );
        // "日本" is four columns wide, "web-1" five: STATE starts at column 7 on each line.
        assert_eq!(t, "NAME   STATE\n日本   ok\nweb-1\n");
    }

    #[test]
    fn a_table_without_rows_is_its_header() {
        assert_eq!(table(&["HOST", "NAME"], &[]), "HOST  NAME\n");
    }
}
