//! The bundled E2E-style corpus, generated deterministically (fixed seeds, no randomness from
//! the machine): meaning representations of restaurants with the E2E slots (`name`, `eatType`,
//! `food`, `area`, `priceRange`, `customer rating`, `familyFriendly`) and sentences written from
//! templates.
//!
//! Every sentence is a combination of the same phrase fragments: an opening clause (one of eight
//! openings, made of six cores, such as `X is a pub serving French food` or `There is a French
//! pub called X`, with the location at its end, after the type or in front) and the optional
//! price, rating and family clauses (two phrasings each, in one of six orders). A whole-sentence
//! template fixes one choice of each: 8 × 2 × 2 × 2 × 6 = 384 of them. The corpus is split in two
//! by construction:
//! - the **private** part: restaurants whose names are one half of the name grid, described with
//!   5 of these templates, each with its own opening; its training rows are only read by the DP
//!   fine-tuning, its held-out meaning representations (distinct from the training ones) with
//!   every private template as references are the test set;
//! - the **public** part plays the role of web text: the other restaurants, described with the
//!   379 other templates (the 5 private ones are held out); it is used without privacy
//!   (vocabulary, pre-training).
//!
//! So public text contains every word, phrase and junction of the private sentences (a test
//! checks every word trigram for every meaning-representation shape), each private opening with
//! every clause phrasing and order, but never the private templates' whole combination (a test
//! checks that no public template writes a private sentence where the meaning representation
//! shows the whole template). Fine-tuning teaches a preference among paths public text already
//! takes, as GPT-2's web text covers the English of the real E2E references but not the
//! references themselves.
//!
//! Limits: this is synthetic text from a small grammar, far more regular than the crowd-sourced
//! E2E references; scores on it show the pipeline working, not E2E results.

use crate::Row;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const ADJECTIVES: [&str; 10] = [
    "Golden", "Blue", "Red", "Green", "Old", "Royal", "Little", "Silver", "Black", "White",
];
const NOUNS: [&str; 10] = [
    "Eagle", "Mill", "Dragon", "Rose", "Crown", "Lion", "Swan", "Oak", "Bell", "Star",
];
const TYPES: [&str; 3] = ["coffee shop", "pub", "restaurant"];
const FOODS: [&str; 7] = [
    "French",
    "Italian",
    "Chinese",
    "Indian",
    "Japanese",
    "English",
    "fast food",
];
const AREAS: [&str; 2] = ["riverside", "city centre"];
const PRICES: [&str; 3] = ["cheap", "moderate", "high"];
const RATINGS: [&str; 3] = ["low", "average", "high"];

/// One meaning representation.
#[derive(Debug, Clone, PartialEq)]
pub struct Mr {
    name: String,
    eat_type: &'static str,
    food: &'static str,
    area: &'static str,
    price: Option<&'static str>,
    rating: Option<&'static str>,
    family: Option<bool>,
}

impl Mr {
    /// The E2E form: `name[The Golden Eagle], eatType[pub], food[French], ...`.
    pub fn text(&self) -> String {
        let mut s = format!(
            "name[{}], eatType[{}], food[{}], area[{}]",
            self.name, self.eat_type, self.food, self.area
        );
        if let Some(p) = self.price {
            s += &format!(", priceRange[{p}]");
        }
        if let Some(r) = self.rating {
            s += &format!(", customer rating[{r}]");
        }
        if let Some(f) = self.family {
            s += &format!(", familyFriendly[{}]", if f { "yes" } else { "no" });
        }
        s
    }
}

/// The restaurant names of a part: the name grid `The <adjective> <noun>` split like a
/// chessboard, so both parts use the same words but never the same restaurant.
fn names(public: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in ADJECTIVES.iter().enumerate() {
        for (j, n) in NOUNS.iter().enumerate() {
            if ((i + j) % 2 == 0) == public {
                out.push(format!("The {a} {n}"));
            }
        }
    }
    out
}

fn random_mr(rng: &mut Rng, names: &[String]) -> Mr {
    Mr {
        name: names[rng.below(names.len())].clone(),
        eat_type: rng.pick(&TYPES),
        food: rng.pick(&FOODS),
        area: rng.pick(&AREAS),
        price: (rng.below(2) == 0).then(|| rng.pick(&PRICES)),
        rating: (rng.below(2) == 0).then(|| rng.pick(&RATINGS)),
        family: (rng.below(3) == 0).then(|| rng.below(2) == 0),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn location(area: &str) -> &'static str {
    if area == "riverside" {
        "by the riverside"
    } else {
        "in the city centre"
    }
}

/// Where the location goes in an opening clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// After the clause: `The Eagle is a pub serving French food by the riverside`.
    End,
    /// After the type: `The Eagle is a pub by the riverside serving French food`.
    AfterType,
    /// In front: `Located by the riverside, The Eagle is a pub serving French food`.
    Front,
}

/// How an opening clause puts the name, the type and the food together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Core {
    /// `The Eagle is a French pub`.
    Adjective,
    /// `The Eagle is a pub serving French food`.
    Serving,
    /// `The Eagle is a pub that serves French food`.
    ThatServes,
    /// `There is a French pub called The Eagle`.
    Called,
    /// `The Eagle offers French food. It is a pub` (public only).
    Offers,
    /// `For French food, visit The Eagle, a pub` (public only).
    Visit,
}

/// The price clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Price {
    /// `with cheap prices`.
    With,
    /// `its prices are cheap`.
    Its,
}

/// The rating clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rating {
    /// `with a high customer rating`.
    With,
    /// `customers rate it high`.
    Customers,
}

/// The family clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `it is family friendly`.
    Family,
    /// `it is kid friendly`.
    Kid,
}

/// The optional clauses, in the order a template writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Price,
    Rating,
    Family,
}

/// A whole-sentence template: an opening clause (core and place of the location), the phrasing
/// of each optional clause and their order. Every template is a combination of the same
/// fragments; a part is defined by which combinations it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Template {
    core: Core,
    place: Place,
    price: Price,
    rating: Rating,
    family: Family,
    order: [Extra; 3],
}

const fn template(
    core: Core,
    place: Place,
    price: Price,
    rating: Rating,
    family: Family,
    order: [Extra; 3],
) -> Template {
    Template {
        core,
        place,
        price,
        rating,
        family,
        order,
    }
}

use Extra::{Family as F, Price as P, Rating as R};

/// The openings (core, place of the location) of the templates, public and private: eight
/// combinations of the six cores and three places of the location (`Adjective` with `AfterType`
/// would write the same words as `Adjective` with `End`).
const PUBLIC_OPENINGS: [(Core, Place); 8] = [
    (Core::Adjective, Place::End),
    (Core::Serving, Place::End),
    (Core::Serving, Place::Front),
    (Core::ThatServes, Place::AfterType),
    (Core::Called, Place::End),
    (Core::Called, Place::Front),
    (Core::Offers, Place::End),
    (Core::Visit, Place::End),
];

/// The six orders of the optional clauses.
const ORDERS: [[Extra; 3]; 6] = [
    [P, R, F],
    [P, F, R],
    [R, P, F],
    [R, F, P],
    [F, P, R],
    [F, R, P],
];

/// Every combination of a public opening, a phrasing of each optional clause and an order of
/// them (8 × 2 × 2 × 2 × 6 = 384 whole-sentence templates), in a fixed order.
fn template_grid() -> impl Iterator<Item = Template> {
    (0..PUBLIC_OPENINGS.len() * 48).map(|k| {
        let (core, place) = PUBLIC_OPENINGS[k / 48];
        let price = [Price::With, Price::Its][k / 24 % 2];
        let rating = [Rating::With, Rating::Customers][k / 12 % 2];
        let family = [Family::Family, Family::Kid][k / 6 % 2];
        template(core, place, price, rating, family, ORDERS[k % 6])
    })
}

/// The public templates: the grid without the private templates (held out, so that no public
/// sentence takes a private template's whole path), 379 whole-sentence templates.
fn public_templates() -> &'static [Template] {
    static PUBLIC: std::sync::OnceLock<Vec<Template>> = std::sync::OnceLock::new();
    PUBLIC.get_or_init(|| template_grid().filter(|t| !PRIVATE.contains(t)).collect())
}

/// Public template `k`: the public part plays the role of web text, varied phrasing the model
/// is pre-trained on.
fn public_template(k: usize) -> Template {
    public_templates()[k % PUBLIC_TEMPLATES]
}

/// The private templates: new whole sentences made of public fragments and public junctions.
/// Each uses a public opening, followed by a choice of clause phrasings and order that public
/// text uses with that opening in every other combination but never in this one (it is held
/// out of the public grid). So what the private part teaches is a preference among paths public
/// text already takes, as the real E2E references are new sentences made of English, and of
/// junctions, that a web-trained GPT-2 has seen.
const PRIVATE: [Template; 5] = [
    template(
        Core::Serving,
        Place::End,
        Price::Its,
        Rating::With,
        Family::Family,
        [R, F, P],
    ),
    template(
        Core::Adjective,
        Place::End,
        Price::With,
        Rating::Customers,
        Family::Family,
        [P, R, F],
    ),
    template(
        Core::ThatServes,
        Place::AfterType,
        Price::Its,
        Rating::Customers,
        Family::Kid,
        [F, R, P],
    ),
    template(
        Core::Called,
        Place::End,
        Price::With,
        Rating::With,
        Family::Family,
        [R, P, F],
    ),
    template(
        Core::Serving,
        Place::Front,
        Price::Its,
        Rating::With,
        Family::Kid,
        [P, F, R],
    ),
];

/// Number of public templates (the grid less the held-out private templates).
pub const PUBLIC_TEMPLATES: usize = PUBLIC_OPENINGS.len() * 48 - PRIVATE.len();
/// Number of private templates.
pub const PRIVATE_TEMPLATES: usize = PRIVATE.len();

/// The opening clause of `t` for `mr` (name, type, food and area).
fn opening(t: &Template, mr: &Mr) -> String {
    let (n, ty, f) = (&mr.name, mr.eat_type, mr.food);
    let food = if f == "fast food" {
        f.to_string()
    } else {
        format!("{f} food")
    };
    let loc = location(mr.area);
    let (at, af) = (article(ty), article(f));
    // (before the location, after it) for the `AfterType` place; `End` and `Front` join them.
    let (head, tail) = match t.core {
        Core::Adjective => (format!("{n} is {af} {f} {ty}"), String::new()),
        Core::Serving => (format!("{n} is {at} {ty}"), format!(" serving {food}")),
        Core::ThatServes => (format!("{n} is {at} {ty}"), format!(" that serves {food}")),
        Core::Called => (format!("There is {af} {f} {ty}"), format!(" called {n}")),
        Core::Offers => (format!("{n} offers {food}"), format!(". It is {at} {ty}")),
        Core::Visit => (format!("For {food}"), format!(", visit {n}, {at} {ty}")),
    };
    match t.place {
        Place::End => format!("{head}{tail} {loc}"),
        Place::AfterType => format!("{head} {loc}{tail}"),
        Place::Front => {
            let clause = format!("{head}{tail}");
            let clause = clause
                .strip_prefix("There")
                .map_or(clause.clone(), |rest| format!("there{rest}"));
            format!("Located {loc}, {clause}")
        }
    }
}

/// Sentence `k` of a part's templates for `mr`.
pub fn sentence(mr: &Mr, public: bool, k: usize) -> String {
    let t = if public {
        public_template(k)
    } else {
        PRIVATE[k % PRIVATE_TEMPLATES]
    };
    let mut s = opening(&t, mr);
    let mut extras = Vec::new();
    for extra in t.order {
        match extra {
            Extra::Price => {
                if let Some(p) = mr.price {
                    extras.push(match t.price {
                        Price::With => format!("with {p} prices"),
                        Price::Its => format!("its prices are {p}"),
                    });
                }
            }
            Extra::Rating => {
                if let Some(r) = mr.rating {
                    extras.push(match t.rating {
                        Rating::With => format!("with {} {r} customer rating", article(r)),
                        Rating::Customers => format!("customers rate it {r}"),
                    });
                }
            }
            Extra::Family => {
                if let Some(fam) = mr.family {
                    let w = if fam { "is" } else { "is not" };
                    extras.push(match t.family {
                        Family::Family => format!("it {w} family friendly"),
                        Family::Kid => format!("it {w} kid friendly"),
                    });
                }
            }
        }
    }
    if let Some(first) = extras.first() {
        // A `with` phrase follows the opening directly; a clause follows a comma and `and`.
        let lead = if first.starts_with("with") {
            " "
        } else {
            ", and "
        };
        s += lead;
        s += &extras.join(" and ");
    }
    s.push('.');
    s
}

/// The bundled corpus.
pub struct Corpus {
    /// Public rows (public restaurants, public templates): pre-training and vocabulary only.
    pub public: Vec<Row>,
    /// Private training rows (private restaurants, private templates).
    pub private_train: Vec<Row>,
    /// Held-out private meaning representations (none occurs in training) with one reference
    /// per private template.
    pub test: Vec<(String, Vec<String>)>,
}

/// Seed of the public part's generator.
const PUBLIC_SEED: u64 = 0xE2E0_2017;
/// Seed of the private part's generator (its own stream: the private rows do not depend on how
/// many public rows are generated).
const PRIVATE_SEED: u64 = 0xE2E0_2018;

/// Generate the corpus: `public` public rows, `private` private training rows and `test`
/// held-out meaning representations, from fixed seeds (the same on every machine).
pub fn generate(public: usize, private: usize, test: usize) -> Corpus {
    let (pub_names, priv_names) = (names(true), names(false));
    let mut rng = Rng(PUBLIC_SEED);
    let public_rows = (0..public)
        .map(|_| {
            let mr = random_mr(&mut rng, &pub_names);
            let k = rng.below(PUBLIC_TEMPLATES);
            Row {
                mr: mr.text(),
                reference: sentence(&mr, true, k),
            }
        })
        .collect();
    let mut rng = Rng(PRIVATE_SEED);
    let mut seen = std::collections::HashSet::new();
    let private_train: Vec<Row> = (0..private)
        .map(|_| {
            let mr = random_mr(&mut rng, &priv_names);
            let k = rng.below(PRIVATE_TEMPLATES);
            seen.insert(mr.text());
            Row {
                mr: mr.text(),
                reference: sentence(&mr, false, k),
            }
        })
        .collect();
    let mut held_out = Vec::new();
    while held_out.len() < test {
        let mr = random_mr(&mut rng, &priv_names);
        if seen.insert(mr.text()) {
            let refs = (0..PRIVATE_TEMPLATES)
                .map(|k| sentence(&mr, false, k))
                .collect();
            held_out.push((mr.text(), refs));
        }
    }
    Corpus {
        public: public_rows,
        private_train,
        test: held_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_disjoint() {
        let a = generate(50, 40, 10);
        let b = generate(50, 40, 10);
        assert_eq!(a.public, b.public);
        assert_eq!(a.private_train, b.private_train);
        assert_eq!(a.test, b.test);
        // The private part does not depend on the size of the public one.
        assert_eq!(generate(0, 40, 10).private_train, a.private_train);
        let public_names: Vec<String> = names(true);
        for r in &a.private_train {
            assert!(!public_names
                .iter()
                .any(|n| r.mr.contains(&format!("[{n}]"))));
        }
        for (mr, refs) in &a.test {
            assert_eq!(refs.len(), PRIVATE_TEMPLATES);
            assert!(!a.private_train.iter().any(|r| &r.mr == mr));
        }
    }

    /// Every meaning representation shape: each type, food, area, and every combination of
    /// present / absent optional slots.
    fn all_shapes() -> Vec<Mr> {
        let mut out = Vec::new();
        for eat_type in TYPES {
            for food in FOODS {
                for area in AREAS {
                    for price in [None, Some("cheap")] {
                        for rating in [None, Some("average")] {
                            for family in [None, Some(true), Some(false)] {
                                out.push(Mr {
                                    name: "The Golden Mill".into(),
                                    eat_type,
                                    food,
                                    area,
                                    price,
                                    rating,
                                    family,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The word n-grams (n = 1..=3) of a sentence, with its start and end marked: its
    /// fragments and the junctions between them.
    fn ngrams(sentence: &str) -> Vec<Vec<String>> {
        let words: Vec<String> = std::iter::once("<s>".to_string())
            .chain(sentence.split(' ').map(str::to_string))
            .chain(std::iter::once("</s>".to_string()))
            .collect();
        (1..=3)
            .flat_map(|n| words.windows(n).map(<[String]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn private_templates_are_new_sentences_of_public_fragments_and_junctions() {
        let public = public_templates();
        assert_eq!(public.len(), PUBLIC_TEMPLATES);
        let grid: Vec<Template> = template_grid().collect();
        for p in &PRIVATE {
            // A private template is a combination the public part holds out ...
            assert!(!public.contains(p));
            assert!(grid.contains(p));
            // ... of a public opening with clause phrasings and an order that public text uses
            // with that opening, each of them.
            let same_opening = |q: &&Template| q.core == p.core && q.place == p.place;
            assert!(public
                .iter()
                .filter(same_opening)
                .any(|q| q.price == p.price));
            assert!(public
                .iter()
                .filter(same_opening)
                .any(|q| q.rating == p.rating));
            assert!(public
                .iter()
                .filter(same_opening)
                .any(|q| q.family == p.family));
            assert!(public
                .iter()
                .filter(same_opening)
                .any(|q| q.order == p.order));
        }
        for mr in all_shapes() {
            let written: Vec<String> = (0..PUBLIC_TEMPLATES)
                .map(|j| sentence(&mr, true, j))
                .collect();
            let known: std::collections::HashSet<Vec<String>> =
                written.iter().flat_map(|s| ngrams(s)).collect();
            let full = mr.price.is_some() && mr.rating.is_some() && mr.family.is_some();
            for k in 0..PRIVATE_TEMPLATES {
                let private = sentence(&mr, false, k);
                // Every word, phrase and junction (word trigrams across fragment boundaries, the
                // start and the end of the sentence included) occurs in public text for the same
                // meaning representation.
                for g in ngrams(&private) {
                    assert!(known.contains(&g), "{k}: {g:?} in {private:?}");
                }
                // Where the meaning representation shows the whole template (all optional
                // slots present), no public template writes the private sentence. (With fewer
                // slots, several templates write the same words, public and private alike.)
                if full {
                    assert!(!written.contains(&private), "{k}: {private:?}");
                }
            }
        }
        // The public templates are all different.
        for (i, a) in public.iter().enumerate() {
            assert!(!public[i + 1..].contains(a));
        }
    }

    #[test]
    fn public_text_covers_every_private_token() {
        // The vocabulary is fixed from public text only; the private sentences need no token
        // outside it (no `<unk>`), so no word had to be added after seeing the private part.
        let c = generate(3000, 300, 30);
        // The public rows alone (without `data/public_vocabulary.txt`).
        let public: Vec<String> = c
            .public
            .iter()
            .flat_map(|r| [crate::prompt(&r.mr), format!(" {}", r.reference)])
            .collect();
        let tok = crate::Tokenizer::compact(public.iter().map(String::as_str)).unwrap();
        let texts = c
            .private_train
            .iter()
            .map(|r| (crate::prompt(&r.mr), format!(" {}", r.reference)))
            .chain(c.test.iter().flat_map(|(mr, refs)| {
                refs.iter()
                    .map(|r| (crate::prompt(mr), format!(" {r}")))
                    .collect::<Vec<_>>()
            }));
        for (prompt, sentence) in texts {
            for text in [prompt, sentence] {
                assert!(!tok.encode(&text).contains(&1), "unknown token in {text:?}");
            }
        }
    }
}
