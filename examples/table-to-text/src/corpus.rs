//! The bundled E2E-style corpus, generated deterministically (a fixed seed, no randomness from
//! the machine): meaning representations of restaurants with the E2E slots (`name`, `eatType`,
//! `food`, `area`, `priceRange`, `customer rating`, `familyFriendly`) and sentences written from
//! templates.
//!
//! It is split in two by construction:
//! - the **public** part: restaurants whose names are one half of the name grid, described with
//!   the public sentence templates; it is used without privacy (vocabulary, pre-training);
//! - the **private** part: the other restaurants, described with *other* templates; its training
//!   rows are only read by the DP fine-tuning, its held-out meaning representations (distinct
//!   from the training ones) with every private template as references are the test set.
//!
//! Limits: this is synthetic text from 7 + 5 templates, far more regular than the crowd-sourced
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

/// Number of public templates.
pub const PUBLIC_TEMPLATES: usize = 7;
/// Number of private templates.
pub const PRIVATE_TEMPLATES: usize = 5;

/// Sentence `k` of a part's templates for `mr`.
pub fn sentence(mr: &Mr, public: bool, k: usize) -> String {
    let (n, t, f, loc) = (&mr.name, mr.eat_type, mr.food, location(mr.area));
    let food = if f == "fast food" {
        f.to_string()
    } else {
        format!("{f} food")
    };
    let mut s = if public {
        match k % PUBLIC_TEMPLATES {
            0 => format!("{n} is {} {f} {t} {loc}", article(f)),
            1 => format!("{n} is {} {t} serving {food} {loc}", article(t)),
            2 => format!("There is {} {f} {t} called {n} {loc}", article(f)),
            3 => format!(
                "Located {loc}, {n} is {} {t} that serves {food}",
                article(t)
            ),
            4 => format!("{n} offers {food} {loc}. It is {} {t}", article(t)),
            5 => format!("For {food} {loc}, visit {n}, {} {t}", article(t)),
            _ => format!(
                "{n} is a place {loc} where you can get {food}. It is {} {t}",
                article(t)
            ),
        }
    } else {
        match k % PRIVATE_TEMPLATES {
            0 => format!("{n} serves {food} {loc} as {} {t}", article(t)),
            1 => format!("If you want {food} {loc}, try the {t} {n}"),
            2 => format!("{n}, {} {t} {loc}, has {food}", article(t)),
            3 => format!("You can find {food} at {n}, {} {t} {loc}", article(t)),
            _ => format!("{n} is {} {t} {loc} with {food}", article(t)),
        }
    };
    let mut extras = Vec::new();
    if let Some(p) = mr.price {
        extras.push(if public {
            format!("with {p} prices")
        } else {
            format!("its prices are {p}")
        });
    }
    if let Some(r) = mr.rating {
        extras.push(if public {
            format!("with {} {r} customer rating", article(r))
        } else {
            format!("customers rate it {r}")
        });
    }
    if let Some(fam) = mr.family {
        let w = if fam { "is" } else { "is not" };
        extras.push(if public {
            format!("it {w} family friendly")
        } else {
            format!("it {w} kid friendly")
        });
    }
    if !extras.is_empty() {
        if public {
            s += &format!(" {}", extras.join(" and "));
        } else {
            s += &format!(", and {}", extras.join(" and "));
        }
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

/// Generate the corpus: `public` public rows, `private` private training rows and `test`
/// held-out meaning representations, from a fixed seed (the same on every machine).
pub fn generate(public: usize, private: usize, test: usize) -> Corpus {
    let mut rng = Rng(0xE2E0_2017);
    let (pub_names, priv_names) = (names(true), names(false));
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
        assert_eq!(a.test, b.test);
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
}
