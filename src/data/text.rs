//! How real exports write their text: delimiters, decimal commas, currency
//! symbols, thousands separators and byte-order marks.
//!
//! Spreadsheets and shop systems differ in every one of these; the readers
//! take a [`TextFormat`] so one file is never half-read as another.

use std::io::BufRead;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A field separator Segmenta reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delimiter {
    Comma,
    Semicolon,
    Tab,
    Pipe,
}

impl Delimiter {
    pub const ALL: [Delimiter; 4] = [Self::Comma, Self::Semicolon, Self::Tab, Self::Pipe];

    pub fn byte(self) -> u8 {
        match self {
            Self::Comma => b',',
            Self::Semicolon => b';',
            Self::Tab => b'\t',
            Self::Pipe => b'|',
        }
    }

    /// How a user writes it on the command line.
    pub fn shown(self) -> &'static str {
        match self {
            Self::Comma => ",",
            Self::Semicolon => ";",
            Self::Tab => "tab",
            Self::Pipe => "|",
        }
    }

    /// The delimiter that splits `header` into the most fields (outside
    /// quotes); a comma when none occurs.
    pub fn sniff(header: &str) -> Self {
        let mut counts = [0usize; 4];
        let mut quoted = false;
        for c in header.chars() {
            if c == '"' {
                quoted = !quoted;
            } else if !quoted {
                if let Some(i) = Self::ALL.iter().position(|d| d.byte() as char == c) {
                    counts[i] += 1;
                }
            }
        }
        // Ties keep the earlier entry of ALL: the comma first.
        let best = (0..4).fold(0, |b, i| if counts[i] > counts[b] { i } else { b });
        Self::ALL[best]
    }
}

impl FromStr for Delimiter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "," | "comma" => Ok(Self::Comma),
            ";" | "semicolon" => Ok(Self::Semicolon),
            "\t" | "\\t" | "tab" => Ok(Self::Tab),
            "|" | "pipe" => Ok(Self::Pipe),
            other => Err(format!("unsupported delimiter {other:?}: use , ; tab or |")),
        }
    }
}

impl std::fmt::Display for Delimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.shown())
    }
}

/// How a text table writes its fields. `Default`: the delimiter sniffed
/// from the header line, a decimal point, ISO 8601 dates (day-first or
/// month-first dates detected when the file settles which).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextFormat {
    /// `None`: sniffed from the header line.
    #[serde(default)]
    pub delimiter: Option<Delimiter>,
    /// `12,50` and `1.234,50` instead of `12.50` and `1,234.50`.
    #[serde(default)]
    pub decimal_comma: bool,
    /// A strftime format for the date column (e.g. `%d/%m/%Y`); `None`:
    /// ISO 8601, or day-/month-first detected from the file.
    #[serde(default)]
    pub date_format: Option<String>,
}

/// UTF-8 byte-order mark, as spreadsheets write it.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Skips a byte-order mark and settles the delimiter: the one given, else
/// the one sniffed from the first line. Reads nothing past the first buffer.
pub fn prepare<R: BufRead>(reader: &mut R, given: Option<Delimiter>) -> std::io::Result<Delimiter> {
    let buffer = reader.fill_buf()?;
    if buffer.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    if let Some(d) = given {
        return Ok(d);
    }
    let buffer = reader.fill_buf()?;
    let end = buffer
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(buffer.len());
    Ok(Delimiter::sniff(&String::from_utf8_lossy(&buffer[..end])))
}

/// A csv reader over `reader` for `format`: BOM skipped, delimiter settled,
/// fields trimmed, quotes and CRLF handled. Returns the delimiter used.
pub fn csv_reader<R: BufRead>(
    mut reader: R,
    format: &TextFormat,
    flexible: bool,
) -> std::io::Result<(csv::Reader<R>, Delimiter)> {
    let delimiter = prepare(&mut reader, format.delimiter)?;
    let csv = csv::ReaderBuilder::new()
        .delimiter(delimiter.byte())
        .trim(csv::Trim::All)
        .flexible(flexible)
        .from_reader(reader);
    Ok((csv, delimiter))
}

/// A hint for a header that did not split: when the only column holds
/// another delimiter, the file is separated by that one.
pub fn delimiter_hint(header: &[String], used: Delimiter) -> Option<String> {
    let [only] = header else { return None };
    Delimiter::ALL
        .into_iter()
        .filter(|d| *d != used)
        .find(|d| only.contains(d.byte() as char))
        .map(|d| format!("the header did not split on '{used}'; try --delimiter '{d}'"))
}

/// Parses a number as exports write it: surrounding spaces, a currency
/// symbol or code before or after (`$12.50`, `12,50 €`, `EUR 3`), thousands
/// separators (`1,234.50`; `1.234,50` with `decimal_comma`), a sign before
/// or after, accounting parentheses for negatives (`(12.50)`).
///
/// Separators must group digits by three, so `12,50` is not read as 1250
/// without `decimal_comma`: it fails, and the caller can suggest the option.
/// Non-finite values are refused.
pub fn parse_number(text: &str, decimal_comma: bool) -> Option<f64> {
    let t = text.trim();
    let plain = if decimal_comma {
        !t.contains(['.', ','])
    } else {
        true
    };
    if plain {
        if let Ok(v) = t.parse::<f64>() {
            return v.is_finite().then_some(v);
        }
    }
    let (parens, t) = match t.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        Some(inner) => (true, inner.trim()),
        None => (false, t),
    };
    // The number starts at its first digit, or at a separator right before
    // it (".50") unless that separator ends a word ("Rs. 500", "Fr.20").
    let digit = t.find(|c: char| c.is_ascii_digit())?;
    let mut first = digit;
    if let Some(sep) = t[..digit].chars().last().filter(|c| matches!(c, '.' | ',')) {
        let before = t[..digit - sep.len_utf8()].chars().last();
        if !before.is_some_and(char::is_alphabetic) {
            first = digit - sep.len_utf8();
        }
    }
    let last = t.rfind(|c: char| c.is_ascii_digit())?;
    let (prefix, body, suffix) = (&t[..first], &t[first..=last], &t[last + 1..]);
    // "CHF 10.-" and "10,–" are whole amounts (Swiss and German price
    // tags), not a trailing minus: only a dash after digits is one.
    let dec = if decimal_comma { ',' } else { '.' };
    let suffix = ['-', '\u{2013}', '\u{2212}']
        .iter()
        .find_map(|&d| suffix.strip_prefix(dec).and_then(|s| s.strip_prefix(d)))
        .unwrap_or(suffix);
    if !currency_words_only(prefix, suffix) {
        return None;
    }
    let mut negative = parens;
    let mut signs = 0;
    for c in prefix.chars().chain(suffix.chars()) {
        match c {
            // U+2212 is the typographic minus.
            '-' | '+' | '\u{2212}' => {
                signs += 1;
                negative ^= c != '+';
            }
            // "Rs. 500": a dot ending an abbreviation.
            '.' if prefix.chars().any(char::is_alphabetic) => {}
            c if c.is_whitespace() || c.is_alphabetic() || is_currency(c) => {}
            _ => return None,
        }
    }
    if signs > 1 || (parens && signs > 0) {
        return None;
    }
    let (decimal, group) = if decimal_comma {
        (',', '.')
    } else {
        ('.', ',')
    };
    // Spaces and apostrophes group digits too (1 234,50; 1'234.50): the
    // same groups of three are required of them.
    let body: String = body
        .chars()
        .map(|c| {
            if matches!(c, ' ' | '\u{a0}' | '\u{202f}' | '\'') {
                group
            } else {
                c
            }
        })
        .collect();
    let (int, frac) = match body.split_once(decimal) {
        Some((i, f)) => (i, Some(f)),
        None => (body.as_str(), None),
    };
    if let Some(f) = frac {
        if !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let groups: Vec<&str> = int.split(group).collect();
    let grouped = groups.len() > 1;
    for (i, g) in groups.iter().enumerate() {
        let ok = g.bytes().all(|b| b.is_ascii_digit())
            && match (grouped, i) {
                (false, _) => true,
                (true, 0) => (1..=3).contains(&g.len()),
                (true, _) => g.len() == 3,
            };
        if !ok {
            return None;
        }
    }
    let digits: String = groups.concat();
    if digits.is_empty() && frac.is_none_or(str::is_empty) {
        return None;
    }
    let v: f64 = format!(
        "{}.{}",
        if digits.is_empty() { "0" } else { &digits },
        frac.unwrap_or("0")
    )
    .parse()
    .ok()?;
    let v = if negative { -v } else { v };
    v.is_finite().then_some(v)
}

/// Whether the letters beside a number are at most one word, and that a
/// currency's code or abbreviation (`USD`, `Rs.`, `kr`, `円`, the `US` of
/// `US$`). Any other word means the cell is not an amount (`cust5`,
/// `12 apples`), and so does a word joined to the digits by a hyphen, the
/// form of codes and ids (`ABC-17`, `RS-232`): reading their digits would
/// invent a number.
fn currency_words_only(prefix: &str, suffix: &str) -> bool {
    let mut words = 0;
    for (is_prefix, side) in [(true, prefix), (false, suffix)] {
        let mut rest = side;
        let mut before = None;
        while let Some(start) = rest.find(char::is_alphabetic) {
            let previous = rest[..start].chars().last().or(before);
            let word_and_after = &rest[start..];
            let end = word_and_after
                .find(|c: char| !c.is_alphabetic())
                .unwrap_or(word_and_after.len());
            let (word, after) = word_and_after.split_at(end);
            words += 1;
            let hyphen_id = is_prefix && after.starts_with('-');
            let dollar = previous == Some('$') || after.trim_start().starts_with('$');
            if words > 1 || hyphen_id || !is_currency_word(word, dollar) {
                return false;
            }
            before = word.chars().last();
            rest = after;
        }
    }
    true
}

/// ISO 4217 codes, as exports write them: in capitals (so `try`, `pen`
/// or `all` in a cell are words, not lira, sol or lek).
const ISO_CODES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RMB", "RON", "RSD", "RUB", "RWF", "SAR", "SBD",
    "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWL", "BTC",
];

/// The codes also written in small letters, and the usual abbreviations
/// and local names, as written.
const CURRENCY_NAMES: &[&str] = &[
    "usd", "eur", "gbp", "chf", "jpy", "inr", "cad", "aud", "nzd", "sek", "nok", "dkk", "Rs", "Fr",
    "SFr", "kr", "Kr", "zł", "Kč", "Ft", "lei", "RM", "Rp", "TL", "Dh", "Dhs", "DH", "KSh", "Ksh",
    "R", "Bs", "Br", "Gs", "FCFA", "CFA", "Euro", "euro", "Euros", "euros",
];

/// Letters written beside `$` to say which dollar (`US$`, `R$`, `$US`).
const DOLLAR_PREFIXES: &[&str] = &[
    "US", "A", "AU", "C", "CA", "CAN", "NZ", "HK", "S", "R", "Mex", "MX", "NT", "RD", "J", "TT",
    "BZ", "EC",
];

fn is_currency_word(word: &str, beside_dollar: bool) -> bool {
    ISO_CODES.contains(&word)
        || CURRENCY_NAMES.contains(&word)
        || (beside_dollar && DOLLAR_PREFIXES.contains(&word))
        // A word in a script without Latin letters, as short as currency
        // names are there (円, 元, 원, грн, лв, руб).
        || (!word.chars().any(|c| c.is_ascii_alphabetic()) && word.chars().count() <= 3)
}

/// A quantity as exports write it: a number, perhaps with a unit word
/// after it (`2 pcs`, `3x`, `1 Stk.`).
pub fn parse_quantity(text: &str, decimal_comma: bool) -> Option<f64> {
    let t = text.trim();
    let number = t.trim_end_matches(|c: char| c.is_alphabetic() || c == '.');
    if number.len() == t.len() || !number.ends_with(|c: char| c.is_ascii_digit() || c == ' ') {
        return parse_number(t, decimal_comma);
    }
    parse_number(number, decimal_comma)
}

/// Currency symbols written next to amounts.
fn is_currency(c: char) -> bool {
    matches!(
        c,
        '$' | '€'
            | '£'
            | '¥'
            | '¢'
            | '₹'
            | '₩'
            | '₽'
            | '₺'
            | '₪'
            | '₫'
            | '₴'
            | '₦'
            | '₱'
            | '฿'
            | '₿'
            | '₣'
            | '₲'
            | '₵'
            | '₡'
            | '₭'
            | '₮'
            | '₸'
            | '₼'
            | '₾'
            | '﷼'
            | '៛'
            | '₨'
            | '¤'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_numbers_parse() {
        let cases = [
            ("12.50", false, Some(12.5)),
            ("  7 ", false, Some(7.0)),
            ("1e-5", false, Some(1e-5)),
            ("$12.50", false, Some(12.5)),
            ("-$12.50", false, Some(-12.5)),
            ("$-12.50", false, Some(-12.5)),
            ("$1,234.50", false, Some(1234.5)),
            ("1,234,567", false, Some(1_234_567.0)),
            ("(12.50)", false, Some(-12.5)),
            ("CHF 10.-", false, Some(10.0)),
            ("10.\u{2013}", false, Some(10.0)),
            ("10,-", true, Some(10.0)),
            ("10.00-", false, Some(-10.0)),
            ("12.50 USD", false, Some(12.5)),
            ("£3", false, Some(3.0)),
            ("12,50", false, None),
            ("1,23,456", false, None),
            ("12,50", true, Some(12.5)),
            ("1.234,50 €", true, Some(1234.5)),
            ("1 234,50 €", true, Some(1234.5)),
            ("-0,5", true, Some(-0.5)),
            ("12.50", true, None),
            ("12", true, Some(12.0)),
            ("", false, None),
            ("abc", false, None),
            ("NaN", false, None),
            ("inf", false, None),
            ("#12", false, None),
            ("--12", false, None),
            ("12-", false, Some(-12.0)),
            ("Rs. 500", false, Some(500.0)),
            ("Rs.500", false, Some(500.0)),
            ("Fr. 20", false, Some(20.0)),
            (".50", false, Some(0.5)),
            ("$.50", false, Some(0.5)),
            ("\u{2212}12,50", true, Some(-12.5)),
            ("12.50\u{2212}", false, Some(-12.5)),
            ("12 50", false, None),
            ("1 2 3", false, None),
            ("1'234.50", false, Some(1234.5)),
            ("12.50 §", false, None),
            // Currency words, and words that are not: an id or a label's
            // digits are never an amount.
            ("EUR 3", false, Some(3.0)),
            ("usd 3", false, Some(3.0)),
            ("100 kr", false, Some(100.0)),
            ("R$ 10,50", true, Some(10.5)),
            ("US$1,000", false, Some(1000.0)),
            ("12,50 zł", true, Some(12.5)),
            ("cust1", false, None),
            ("cust10", false, None),
            ("A-17", false, None),
            ("ABC-17", false, None),
            ("XYZ 5", false, None),
            ("12 apples", false, None),
            ("x12", false, None),
            ("12abc", false, None),
            ("USD 12 EUR", false, None),
            ("A$ 5", false, Some(5.0)),
            ("A 5", false, None),
            ("R 100", false, Some(100.0)),
            ("US $12.50", false, Some(12.5)),
            ("12,50 $US", true, Some(12.5)),
            ("CAN$ 5", false, Some(5.0)),
            ("1,000円", false, Some(1000.0)),
            ("250 грн", false, Some(250.0)),
            ("12.50 KZT", false, Some(12.5)),
            ("CHF 1'234.50", false, Some(1234.5)),
            ("RS-232", false, None),
            ("FR-75", false, None),
            ("try 2", false, None),
            ("pen 3", false, None),
            ("клиент5", false, None),
        ];
        for (text, want) in [
            ("2 pcs", Some(2.0)),
            ("3x", Some(3.0)),
            ("1 Stk.", Some(1.0)),
            ("4", Some(4.0)),
            ("lots", None),
            ("x3", None),
        ] {
            assert_eq!(parse_quantity(text, false), want, "{text:?}");
        }
        for (text, comma, want) in cases {
            assert_eq!(
                parse_number(text, comma),
                want,
                "{text:?} decimal_comma={comma}"
            );
        }
    }

    #[test]
    fn delimiters_are_sniffed_outside_quotes() {
        assert_eq!(
            Delimiter::sniff("customer_id;date;amount"),
            Delimiter::Semicolon
        );
        assert_eq!(Delimiter::sniff("a\tb\tc"), Delimiter::Tab);
        assert_eq!(Delimiter::sniff("a|b"), Delimiter::Pipe);
        assert_eq!(Delimiter::sniff("\"x;y;z\",b"), Delimiter::Comma);
        assert_eq!(Delimiter::sniff("single"), Delimiter::Comma);
        assert_eq!("tab".parse::<Delimiter>(), Ok(Delimiter::Tab));
        assert!(":".parse::<Delimiter>().is_err());
    }

    #[test]
    fn a_bom_is_skipped_and_the_header_sniffed() {
        let text = b"\xEF\xBB\xBFid;x\r\n1;2,5\r\n";
        let format = TextFormat::default();
        let (mut r, d) = csv_reader(&text[..], &format, false).unwrap();
        assert_eq!(d, Delimiter::Semicolon);
        assert_eq!(r.headers().unwrap(), vec!["id", "x"]);
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(parse_number(&row[1], true), Some(2.5));
    }
}
