"""Writes e2e_sample.csv: a synthetic table-to-text sample in the E2E CSV format (columns mr, ref),
built from templates (not E2E data). Run: python3 make_sample.py"""
import csv, random

rng = random.Random(7)
names = ["The Eagle", "The Mill", "Blue Spice", "Green Man", "The Punter", "Aromi", "The Wrestlers",
         "Zizzi", "The Cricketers", "Loch Fyne", "Bibimbap House", "The Vaults"]
types = ["coffee shop", "pub", "restaurant"]
foods = ["French", "Italian", "Chinese", "Indian", "Japanese", "English", "fast food"]
areas = ["riverside", "city centre"]
prices = ["cheap", "moderate", "high"]
rows = []
for i in range(96):
    name, t, food, area = rng.choice(names), rng.choice(types), rng.choice(foods), rng.choice(areas)
    mr = f"name[{name}], eatType[{t}], food[{food}], area[{area}]"
    art = "an" if food[0] in "AEIOU" else "a"
    loc = "by the riverside" if area == "riverside" else "in the city centre"
    variants = [f"{name} is {art} {food} {t} {loc}.", f"{name} is {art} {t} serving {food} food {loc}.",
                f"There is {art} {food} {t} called {name} {loc}."]
    if rng.random() < 0.5:
        price = rng.choice(prices)
        mr += f", priceRange[{price}]"
        variants = [v[:-1] + f" with {price} prices." for v in variants]
    rows.append((mr, rng.choice(variants)))
with open("e2e_sample.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mr", "ref"])
    w.writerows(rows)
